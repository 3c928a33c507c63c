"""The README's main job with a user's models folder: converted adapter, extra_model_paths.yaml, real server."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]


def test_convert_then_run_with_a_models_folder(tmp_path, stand_in_models):
    models = tmp_path / "user-models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "v2-1_512-ema-pruned.safetensors").symlink_to(stand_in_models["sd21base"])
    adapter = models / "ezigen" / "ezigen_sd21base.safetensors"
    convert = subprocess.run([sys.executable, "-m", "ezigen_lib.convert", str(stand_in_models["ezigen"]), str(adapter)],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert convert.returncode == 0, convert.stderr
    assert adapter.stat().st_size < 110 * 2**20  # adapters only: about 100 MB in fp16, not the 1.8 GB folder
    with safe_open(str(adapter), "pt") as f:
        assert f.metadata()["base_model"] == "sd2.1-base" and len(list(f.keys())) == 113

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "scripts/run_workflow.py", "--models", str(models), "--out", str(out),
                          "--size", "64", "--steps", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (printed,) = [Path(line) for line in run.stdout.splitlines() if line.endswith(".png")]
    assert printed.parent == out and Image.open(printed).size == (64, 64)
    assert "RANDOM-WEIGHT" not in run.stderr  # real-weights mode: the models came from the folder given

"""`python -m ezigen_lib.train` on the full-size random-weight SD1.5 checkpoint ComfyUI loads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def train(*args: str) -> subprocess.CompletedProcess:
    from ezigen_lib.host import comfy_root

    env = {**os.environ, "COMFYUI_PATH": str(comfy_root())}  # the host under test, as a user points at theirs
    return subprocess.run([sys.executable, "-m", "ezigen_lib.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)


def test_train_save_resume_and_export(tmp_path, stand_in_models):
    from ezigen_lib.checkpoint import load_adapter  # imports ComfyUI: only once the session bootstrapped it
    from unit.test_reference_data import write_coco
    from training_data import write_training_folder

    data = write_training_folder(tmp_path / "data", count=2)
    coco = write_coco(tmp_path / "coco")
    (coco / "annotations" / "instances_train2014.json").rename(coco / "annotations" / "instances_val2014.json")
    (coco / "annotations" / "captions_train2014.json").rename(coco / "annotations" / "captions_val2014.json")
    (coco / "train2014").rename(coco / "val2014")
    for split in ("instances", "captions"):  # an empty train2014 next to the val2014 images
        (coco / "annotations" / f"{split}_train2014.json").write_text(
            '{"images": [], "annotations": [], "categories": []}')
    out = tmp_path / "run"
    common = ["--checkpoint", str(stand_in_models["sd15"]), "--data", str(data), "--out", str(out),
              "--resolution", "64", "--save-every", "1", "--cpu"]
    first = train(*common, "--steps", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoint-1" / "trainer_state.pt").is_file()
    second = train(*common, "--steps", "2", "--resume", str(out / "latest"), "--reference-folder",
                   "--coco", str(coco), "--tensorboard", str(tmp_path / "tb"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "EZIGen training" in second.stderr and "loss=" in second.stderr  # the progress bar
    adapter = load_adapter(out / "ezigen_adapter.safetensors")
    assert adapter.metadata["training_steps"] == "2" and adapter.info.base_model == "sd1.5"
    assert adapter.info.widths[0] == 320 and adapter.info.head_dim == 64
    assert load_adapter(out / "reference-checkpoint").info.widths == adapter.info.widths
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))  # TensorBoard logs


def test_missing_data_is_a_clear_error(tmp_path, stand_in_models):
    result = train("--checkpoint", str(stand_in_models["sd15"]), "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "manifest.jsonl not found" in result.stderr

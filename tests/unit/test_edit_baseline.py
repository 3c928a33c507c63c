"""The whole-image edit, bit for bit as it was before crop-and-stitch came (recorded after issue 18's grid).

tests/data/edit_whole_image.pt holds the results of edit_baseline_worker.py's edits as the pack computed
them before the `crop` option existed. They were recorded per host at first; ComfyUI 0.3.75, 0.8.0 and 0.28.2 gave
the same bits, so one file serves every host, and a host that computes the edit differently fails here. To record
again (only when the whole-image edit is meant to change): EZIGEN_RECORD_EDIT_BASELINE=1, on one host, then check
the others against it.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

from ezigen_lib.host import comfy_version

WORKER = Path(__file__).with_name("edit_baseline_worker.py")
BASELINE = Path(__file__).resolve().parents[1] / "data" / "edit_whole_image.pt"
CASES = ["clean", "faithful", "faithful_hard_mask_output_reference"]


def test_whole_image_is_bit_identical_to_before_crop(tmp_path):
    out = tmp_path / "edits.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    results = torch.load(out)
    if os.environ.get("EZIGEN_RECORD_EDIT_BASELINE") == "1":
        torch.save(results, BASELINE)
    assert BASELINE.is_file(), f"{BASELINE.name} is missing: record it (see this file's docstring)"
    recorded = torch.load(BASELINE)
    assert sorted(recorded) == sorted(results) == CASES
    for name, image in results.items():
        assert torch.equal(image, recorded[name]), f"{name}: the whole-image edit changed (on ComfyUI {comfy_version()})"

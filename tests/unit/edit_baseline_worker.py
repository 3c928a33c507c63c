"""Run by test_edit_baseline in a fresh process with one thread: the whole-image edits, saved to argv[1].

A fresh process, because a thread count chosen at start-up changes the order of some sums (the last bits
differ after torch.set_num_threads(1) in a process started with two)."""
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(REPO / "scripts"))  # the tiny models
sys.path.append(str(REPO))  # appended: the repo's nodes/ must not shadow ComfyUI's nodes.py

from ezigen_lib.host import bootstrap_inprocess  # noqa: E402

BASE_DIR = Path(tempfile.mkdtemp(prefix="ezigen-baseline-"))
atexit.register(shutil.rmtree, BASE_DIR, ignore_errors=True)  # each run starts workers: leave nothing in /tmp
bootstrap_inprocess(BASE_DIR)

import torch  # noqa: E402

from ezigen_lib.autostop import LoopPolicy  # noqa: E402
from ezigen_lib.edit import EditSettings, run_edit  # noqa: E402
from ezigen_lib.edit_source import edit_source  # noqa: E402
from tiny_models import patched_tiny, random_context  # noqa: E402

SOURCE = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(4))
MASK = torch.zeros(50, 70)
MASK[10:30, 20:50] = 1
MASK[8:10, 20:50] = 0.5  # a soft edge
CASES = {  # name: settings besides the shared ones
    "faithful": {},
    "clean": {"mode": "clean"},
    "faithful_hard_mask_output_reference": {"mask_mode": "hard", "output_size": "reference"},
}

model, vae = patched_tiny(0.0, 1.0)
crop = {"crop": "whole image"} if "crop" in EditSettings.__dataclass_fields__ else {}
results = {}
for name, extra in CASES.items():
    settings = EditSettings(seed=1, steps=10, short_side=64, sampler_name="euler", policy=LoopPolicy(loops=1),
                            **extra, **crop)
    with torch.inference_mode():
        results[name] = run_edit(model, random_context(5), vae, edit_source(SOURCE, MASK), [[random_context(100), {}]],
                                 [[random_context(101), {}]], settings).image.clone()
torch.save(results, sys.argv[1])

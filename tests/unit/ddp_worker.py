"""Run by torchrun from the two-process tests: one tiny training run per process (ARGV: out, data, [sdxl])."""
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

BASE_DIR = Path(tempfile.mkdtemp(prefix="ezigen-ddp-"))
atexit.register(shutil.rmtree, BASE_DIR, ignore_errors=True)  # each run starts workers: leave nothing in /tmp
bootstrap_inprocess(BASE_DIR)

import torch  # noqa: E402

from ezigen_lib.training.trainer import distributed_from_env  # noqa: E402
from tiny_models import tiny_trainer  # noqa: E402
from tiny_sdxl import tiny_sdxl_trainer  # noqa: E402

out, data = Path(sys.argv[1]), Path(sys.argv[2])
assert distributed_from_env(), "expected to be launched by torchrun with WORLD_SIZE > 1"
make = tiny_sdxl_trainer if sys.argv[3:] == ["sdxl"] else tiny_trainer
trainer = make(data, out, steps=3, save_every=0, learning_rate=1e-3)
trainer.run()
torch.save({"step": trainer.step, "world": trainer.world,
            "state": {k: v.detach().cpu() for k, v in trainer.adapters.state_dict().items()}},
           out / f"rank{trainer.rank}.pt")

"""The in-process ComfyUI set-up every developer script shares (benchmarks, the output recorder).

A script run as ``python scripts/NAME.py`` has scripts/ on its path already (this module, the harness
beside it); this makes ``ezigen_lib`` importable too and starts ComfyUI's modules in a throw-away base
folder, removed at exit. Scripts import nothing of ComfyUI before `start`.
"""
from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # ezigen_lib; appended: the repo's nodes/ must not shadow ComfyUI's nodes.py


def start(prefix: str, *, cpu: bool | None = None) -> Path:
    """Bootstrap ComfyUI in this process with models/, output/ and user/ in a fresh temporary folder, and
    return that folder (scripts put their own scratch files in it). `cpu`: None uses the GPU when torch
    sees one (benchmarks), True forces the CPU (the recorder, whose numbers must not depend on the machine)."""
    from ezigen_lib.host import bootstrap_inprocess

    base = Path(tempfile.mkdtemp(prefix=f"ezigen-{prefix}-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    bootstrap_inprocess(base / "comfy", cpu=cpu)
    return base


def stand_in(paths: dict, names: tuple[str, ...], banner: str) -> dict:
    """`paths` with every name of `names` that is None filled by a random-weight stand-in checkpoint (made
    once, cached in .cache/models), saying so on stderr: a benchmark with no real files measures speed only."""
    missing = tuple(name for name in names if paths.get(name) is None)
    if not missing:
        return paths
    import make_checkpoints  # noqa: PLC0415 - after `start`: it imports ComfyUI

    print(f"[benchmark] RANDOM-WEIGHT STAND-INS ({banner})", file=sys.stderr)
    made = make_checkpoints.make_all(only=missing)
    return {**paths, **{name: made[name] for name in missing}}

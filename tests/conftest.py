"""Shared test set-up: make the repo's scripts/ importable (ComfyUI bootstrap, fixtures, server harness)."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO / "scripts", REPO):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

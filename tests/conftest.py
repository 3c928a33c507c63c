"""Shared test set-up: make the test harness (tests/harness/: server, stand-in models, demo inputs), the
repo's scripts/ (commands some tests run or import) and ezigen_lib (the ComfyUI bootstrap) importable."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "scripts", REPO / "tests" / "harness"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: the repo's nodes/ must not shadow ComfyUI's nodes.py

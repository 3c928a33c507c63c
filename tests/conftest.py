"""Shared test set-up: make the repo's scripts/ (the commands some tests run, and the developer harness they
share with the tests: server, stand-in and tiny models, demo inputs) and ezigen_lib (the ComfyUI bootstrap)
importable."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: the repo's nodes/ must not shadow ComfyUI's nodes.py

"""pytest plugin (loaded with -p from pyproject.toml): collect the repository root as a plain folder.

The repository root is the ComfyUI pack, so it has an ``__init__.py`` with relative imports. pytest
would collect the root as a Python package and import that file under whatever name the checkout
folder has (``main``, ``ci.x1y2``, ...), which fails. The pack is tested through ComfyUI instead.
"""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collect_directory(path: Path, parent: pytest.Collector):
    if path == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None

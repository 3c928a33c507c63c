"""In-process ComfyUI for unit tests: CPU, a throw-away base directory, tiny SD-layout models."""
import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from ezigen_lib.host import bootstrap_inprocess

BASE_DIR = Path(tempfile.mkdtemp(prefix="ezigen-unit-"))
atexit.register(shutil.rmtree, BASE_DIR, ignore_errors=True)  # one per run: do not let them pile up
bootstrap_inprocess(BASE_DIR)

from tiny_models import load_pack, patched_tiny  # noqa: E402 (imports ComfyUI: after the bootstrap)


@pytest.fixture(scope="module")
def nodes():
    """The pack's nodes package, as ComfyUI loads it."""
    return load_pack().nodes


@pytest.fixture(scope="module")
def parts():
    """A tiny patched MODEL and its VAE, the adapter acting over the whole run."""
    return patched_tiny(0.0, 1.0)

"""In-process ComfyUI for unit tests: CPU, a throw-away base directory, tiny SD-layout models."""
import atexit
import shutil
import tempfile
from pathlib import Path

from ezigen_lib.host import bootstrap_inprocess

BASE_DIR = Path(tempfile.mkdtemp(prefix="ezigen-unit-"))
atexit.register(shutil.rmtree, BASE_DIR, ignore_errors=True)  # one per run: do not let them pile up
bootstrap_inprocess(BASE_DIR)

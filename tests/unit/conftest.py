"""In-process ComfyUI for unit tests: CPU, a throw-away base directory, tiny SD-layout models."""
import tempfile
from pathlib import Path

from ezigen_lib.host import bootstrap_inprocess

BASE_DIR = Path(tempfile.mkdtemp(prefix="ezigen-unit-"))
bootstrap_inprocess(BASE_DIR)

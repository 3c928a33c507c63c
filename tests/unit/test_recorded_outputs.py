"""Every path of the pack gives the outputs recorded before the redesign of issue 25, bit for bit.

scripts/record_outputs.py runs each path on the tiny models in a one-thread process (a fresh one: the thread
count changes the last bits) and compares the digests with tests/data/recorded_outputs_<host>.json, recorded
on each host with the library as it was before. To record again (only when a path is meant to change):
`python scripts/record_outputs.py record --out X.pt && python scripts/record_outputs.py digests X.pt`.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from ezigen_lib.host import comfy_version

REPO = Path(__file__).resolve().parents[2]
DIGESTS = REPO / "tests" / "data" / f"recorded_outputs_{'.'.join(map(str, comfy_version()))}.json"


@pytest.mark.slow
def test_every_path_gives_the_recorded_outputs():
    if not DIGESTS.is_file():
        pytest.skip(f"no recording for this host ({DIGESTS.name})")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "record_outputs.py"), "check"],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "all outputs bit-identical" in run.stdout

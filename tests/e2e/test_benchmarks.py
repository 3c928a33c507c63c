"""The benchmark scripts still run (they are not timed here: speed is theirs to print, not a test's)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RATIO = r"(\d+\.\d{3})"


def run_script(name: str, *args: str) -> str:
    run = subprocess.run([sys.executable, f"scripts/{name}", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_benchmark_sampler_prints_its_ratios(stand_in_models):
    out = run_script("benchmark_sampler.py", "--sizes", "64", "--steps", "2", "--loops", "1",
                     "--subject-resolution", "64")
    row = re.search(r"^\s+64\s+(\d+)\s+(\d+)\s+\d+\.\d\d\s+\d+\.\d\d\s+" + RATIO + "$", out, re.M)
    assert row and int(row.group(1)) == 2 + 1, out  # the decoupled pass's 2 steps and 1 loop of 1 step
    assert re.search(r"two masked subjects at 64px: .* ratio " + RATIO, out), out
    assert re.search(r"edit at 64px, 1 rounds: 1 CFG evaluations", out), out


def test_benchmark_training_prints_its_speed(stand_in_models):
    out = run_script("benchmark_training.py", "--resolution", "64", "--steps", "1")
    assert re.search(r"sd15_random\.safetensors \(SD15, 16 adapters, double residual, 64 px\): \d+\.\d{3} samples/s"
                     r", [0-9.]+ s/step, peak memory \d+ MiB", out), out
    assert re.search(r"sd21base_random\.safetensors \(SD20, 16 adapters, double residual, 64 px\): \d+\.\d{3} "
                     r"samples/s", out), out


def test_benchmark_edit_crop_prints_its_ratios(stand_in_models):
    out = run_script("benchmark_edit_crop.py", "--sizes", "128", "256", "--region", "32", "--short-side", "64",
                     "--steps", "1")
    rows = {(crop, int(size)): (int(region), work) for crop, size, region, work in re.findall(
        r"^\s+(around mask|whole image)\s+(\d+)\s+(\d+)\s+(\d+x\d+)\s+\d+\.\d\d\s+\d+\.\d{3}\s+\d+\.\d\s+\d+\.\d{3}$",
        out, re.M)}
    assert sorted(rows) == [("around mask", 128), ("around mask", 256), ("whole image", 128), ("whole image", 256)], out
    # the box keeps the region's detail and work size whatever the source's size; the whole image shrinks it
    assert rows[("around mask", 128)] == rows[("around mask", 256)] == (32, "64x64"), out
    assert rows[("whole image", 128)] == (16, "64x64") and rows[("whole image", 256)] == (8, "64x64"), out

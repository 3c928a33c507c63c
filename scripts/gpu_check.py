"""GPU check of the shipped generate and edit workflows under ComfyUI's VRAM managements (see gpu_check.sh).

For each flag set (the host's defaults, which on newer cores turn dynamic VRAM management on for NVIDIA
GPUs, and ``--disable-dynamic-vram`` where the host has that switch) a fresh headless ComfyUI runs
workflows/ezigen_generate.json and workflows/ezigen_edit.json at 512 px in fp16 with the same seeds, and
prints per workflow: wall time, peak GPU memory in use (nvidia-smi, sampled every 0.1 s) and whether the
images of the flag sets match (max abs pixel difference).

    python scripts/gpu_check.py [--models /path/to/ComfyUI/models] [--size 512] [--steps 50] [--cpu]

Without --models it uses the random-weight stand-ins (the pipeline and memory behaviour are real, the
pictures are noise). --cpu is only for checking the script itself on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from inprocess import REPO  # noqa: E402 - and ezigen_lib importable

from comfy_host import ComfyServer, host_understands, set_inputs, ui_to_api  # noqa: E402
from demo_inputs import write_source_image, write_subject_image  # noqa: E402
from ezigen_lib.host import comfy_root, comfy_version  # noqa: E402
from run_workflow import PACK_NAME, _extra_paths_yaml, _shrink, _use_stand_ins  # noqa: E402

WORKFLOWS = ("ezigen_generate.json", "ezigen_edit.json")
DYNAMIC_OFF = "--disable-dynamic-vram"


class PeakMemory:
    """Highest `memory.used` (MiB) nvidia-smi reports for GPU 0 while the block runs; None without nvidia-smi."""

    def __init__(self):
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> int | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=10)
            return int(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = self._sample()
            if used is not None:
                self.peak = max(self.peak or 0, used)
            self._stop.wait(0.1)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_flag_set(flags: list[str], args, models, made, base: Path) -> dict[str, dict]:
    write_subject_image(base / "input")
    write_source_image(base / "input", height=args.size, width=args.size * 4 // 3 // 8 * 8)  # landscape, like a photo
    extra = list(flags) + (["--extra-model-paths-config", str(_extra_paths_yaml(args.models.resolve(), base))]
                           if args.models else [])
    if not args.cpu:
        extra.append("--force-fp16")
    results: dict[str, dict] = {}
    with ComfyServer(base, custom_nodes={PACK_NAME: REPO}, models=models, extra_args=extra, cpu=args.cpu) as server:
        info = server.object_info()
        for name in WORKFLOWS:
            prompt = ui_to_api(json.loads((REPO / "workflows" / name).read_text()), info)
            if made:
                _use_stand_ins(prompt, made)
            _shrink(prompt, args.size, args.steps)
            sampler = "EZIGenSampler" if "generate" in name else "EZIGenEdit"
            set_inputs(prompt, sampler, seed=1234, loops=args.loops)
            start = time.monotonic()
            with PeakMemory() as memory:
                history = server.run(prompt, timeout=3600)
            seconds = time.monotonic() - start
            images = [np.asarray(Image.open(p).convert("RGB")).astype(int) for p in server.output_images(history)]
            results[name] = {"seconds": seconds, "peak_mib": memory.peak, "images": images}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="a ComfyUI models folder with the real weights")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--loops", type=int, default=2, help="fixed loop count, so both runs do the same work")
    parser.add_argument("--cpu", action="store_true", help="check the script itself without a GPU")
    args = parser.parse_args(argv)

    root = comfy_root()
    version = ".".join(map(str, comfy_version(root)))
    flag_sets = [[]]
    if host_understands(root, DYNAMIC_OFF):
        flag_sets.append([DYNAMIC_OFF])
    else:
        print(f"[gpu_check] ComfyUI {version} has no {DYNAMIC_OFF}: only its default VRAM management is run")

    work = Path(tempfile.mkdtemp(prefix="ezigen-gpu-check-"))
    models, made = {}, None
    if not args.models:
        from ezigen_lib.host import bootstrap_inprocess
        bootstrap_inprocess(work / "inprocess")
        import make_checkpoints
        made = make_checkpoints.make_all()
        models = {"checkpoints": [made["sd21base"]], "ezigen": [made["ezigen"]], "clip_vision": [made["clip_b32"]]}

    runs = {}
    for i, flags in enumerate(flag_sets):
        label = " ".join(flags) or "default flags"
        runs[label] = run_flag_set(flags, args, models, made, work / f"run{i}")

    print(f"\n[gpu_check] ComfyUI {version}, {'CPU (script check only)' if args.cpu else 'GPU, fp16'}, "
          f"{args.size} px, {args.steps} steps, {args.loops} loops, {'real weights' if args.models else 'stand-ins'}")
    reference = next(iter(runs))
    ok = True
    for label, results in runs.items():
        for name, r in results.items():
            line = f"  {label:>24} | {name:<22} | {r['seconds']:7.1f} s | peak {r['peak_mib'] or 'n/a'} MiB"
            if label != reference:
                ref = runs[reference][name]["images"]
                diff = max((int(np.abs(a - b).max()) for a, b in zip(ref, r["images"])), default=-1)
                same_count = len(ref) == len(r["images"])
                line += f" | images match {reference}: {'yes' if same_count and diff == 0 else 'no'} (max diff {diff})"
                ok = ok and same_count and diff <= 2
            print(line)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

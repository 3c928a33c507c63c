"""Benchmark: EZIGen Edit's cost follows the region, not the source (crop-and-stitch).

    python scripts/benchmark_edit_crop.py [--sizes 1024 2048 4096] [--region 256] [--short-side 512]
        [--steps 10] [--split 0.4] [--repeats 1] [--checkpoint FILE] [--adapter FILE_OR_FOLDER]

Edits the same --region x --region square in square sources of each size (--sizes), with crop 'around mask'
and, beside it, 'whole image', all in this process on one loaded SD2.1-base model with a subject (--checkpoint
and --adapter; either not given is a random-weight stand-in). Prints, per path and size, the seconds (the best of
--repeats) and the peak memory the edit added (CUDA: allocated; CPU: resident, which includes the new
source-sized output image: 192 MiB at 4096 px), each as a ratio to the first size's run of the same path, and how many work pixels the region got (its detail). The target: the crop path
within 1.2x of the smallest source at every size.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import torch

import inprocess


class PeakMemory:
    """Peak memory a block adds: CUDA's allocator peak, else the process's resident size sampled every 2 ms."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak = 0

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start, self.peak, self._stop = self._resident(), self._resident(), threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, self._resident())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.added = torch.cuda.max_memory_allocated() - self.start
            return
        self._stop.set()
        self._thread.join()
        self.added = max(self.peak, self._resident()) - self.start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--region", type=int, default=256)
    parser.add_argument("--short-side", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--split", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=1)
    inprocess.add_model_arguments(parser)
    args = parser.parse_args(argv)

    inprocess.start("bench-crop")
    import comfy.model_management

    from ezigen_lib.autostop import LoopPolicy
    from ezigen_lib.edit import EditSettings, run_edit
    from ezigen_lib.edit_source import edit_source
    from ezigen_lib.inject import apply_subject
    from ezigen_lib.inversion_text import exceptional_prompt

    bench = inprocess.load_bench(args)
    model, clip, vae = bench.model, bench.clip, bench.vae
    device = comfy.model_management.get_torch_device()
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, checkpoint: {bench.checkpoint.name}, "
          f"{args.steps} steps, split {args.split}, one round, short_side {args.short_side}")
    positive, negative, inversion_context = bench.text("a dog on the sofa"), bench.text(""), exceptional_prompt(clip)
    subject = bench.subject(256)
    with torch.inference_mode():
        patched = apply_subject(model, bench.encoder, subject, 1.0, 0.6, 1.0)

    def inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The source and its mask: made before the measurement, as a node receives them."""
        source = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(size))
        mask = torch.zeros(1, size, size)
        top = left = size // 3  # the same region, away from the borders
        mask[:, top:top + args.region, left:left + args.region] = 1.0
        return source, mask

    def edit(size: int, crop: str, source: torch.Tensor, mask: torch.Tensor) -> dict:
        settings = EditSettings(seed=0, steps=args.steps, split_ratio=args.split, policy=LoopPolicy(loops=1),
                                short_side=args.short_side, crop=crop)
        with torch.inference_mode():
            return run_edit(patched, inversion_context, vae, edit_source(source, mask), positive, negative,
                            settings).report

    edit(args.sizes[0], "around mask", *inputs(args.sizes[0]))  # warm-up: loads everything once
    print(f"{'crop':>12} {'source':>7} {'region work px':>14} {'work size':>10} {'seconds':>8} {'ratio':>6} "
          f"{'peak MiB':>9} {'ratio':>6}")
    for crop in ("around mask", "whole image"):
        first: tuple[float, float] | None = None
        for size in args.sizes:
            seconds, added = [], []
            source, mask = inputs(size)
            for _ in range(args.repeats):
                with PeakMemory(device) as peak:
                    t = time.perf_counter()
                    report = edit(size, crop, source, mask)
                    seconds.append(time.perf_counter() - t)
                added.append(peak.added)
            s, m = min(seconds), max(1, min(added))
            first = first or (s, m)
            work = report["processing_size"]
            scale = work[0] / (report["crop"]["box"][2] if crop == "around mask" else size)
            print(f"{crop:>12} {size:>7} {round(args.region * scale):>14} {work[0]:>4}x{work[1]:<5} {s:>8.2f} "
                  f"{s / first[0]:>6.3f} {m / 2**20:>9.1f} {m / first[1]:>6.3f}")
            del source, mask
    return 0


if __name__ == "__main__":
    sys.exit(main())

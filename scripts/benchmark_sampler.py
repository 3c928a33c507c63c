"""Benchmark: EZIGen Sampler against a plain KSampler doing the same number of UNet evaluations.

    python scripts/benchmark_sampler.py [--sizes 64 256] [--steps 10] [--split 0.4] [--loops 2]
        [--subject-resolution 512] [--repeats 1] [--checkpoint FILE] [--adapter FILE_OR_FOLDER]

Both runs happen in this process on the same loaded SD2.1-base model: --checkpoint (e.g.
v2-1_512-ema-pruned.safetensors) and --adapter (an EZIGen adapter file or checkpoint folder); either one
not given is a random-weight stand-in. Prints the time ratio (EZIGen / plain) per image size (--sizes,
the best of --repeats runs) and the UNet evaluation count against the reference's, then the cost of two
subjects with masks (left and right half) against one subject without, then an edit's.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import inprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--split", type=float, default=0.4)
    parser.add_argument("--loops", type=int, default=2)
    parser.add_argument("--subject-resolution", type=int, default=512)
    inprocess.add_model_arguments(parser)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    inprocess.start("bench")
    import comfy.model_management
    import comfy.sample

    from ezigen_lib.autostop import LoopPolicy
    from ezigen_lib.edit import EditSettings, run_edit
    from ezigen_lib.edit_source import edit_source
    from ezigen_lib.generate import GenerationSettings, run_generation
    from ezigen_lib.inject import apply_subject
    from ezigen_lib.inversion_text import exceptional_prompt
    from ezigen_lib.step_counts import reference_unet_calls

    bench = inprocess.load_bench(args)
    model, clip, vae, encoder = bench.model, bench.clip, bench.vae, bench.encoder
    device = comfy.model_management.get_torch_device()
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, checkpoint: {bench.checkpoint.name}")

    positive, negative = bench.text("a dog on the beach"), bench.text("dark, blur")
    loop_negative = bench.text("")  # faithful mode's loops use the empty prompt, as the reference
    t = time.perf_counter()
    subject = bench.subject(args.subject_resolution)
    encode_s = time.perf_counter() - t
    with torch.inference_mode():
        patched = apply_subject(model, encoder, subject, 1.0, 0.6, 1.0)
    print(f"subject encoding ({args.subject_resolution}px, 1 UNet pass): {encode_s:.2f} s")
    print(f"{'size':>6} {'unet evals':>10} {'reference':>9} {'ezigen s':>9} {'plain s':>8} {'ratio':>6}")

    for size in args.sizes:
        latent = torch.zeros(1, 4, size // 8, size // 8)
        settings = GenerationSettings(seed=0, steps=args.steps, split_ratio=args.split,
                                      policy=LoopPolicy(loops=args.loops))

        def ezigen():
            return run_generation(patched, positive, negative, {"samples": latent}, vae, settings, loop_negative)

        def plain(evals: int):
            noise = comfy.sample.prepare_noise(latent, 0)
            x = comfy.sample.sample(model, noise, evals, settings.cfg, settings.sampler_name, settings.scheduler,
                                    positive, negative, latent, disable_pbar=True, seed=0)
            return vae.decode(x)

        with torch.inference_mode():
            evals = ezigen().report["unet_evaluations"]  # warm-up: loads everything once
            plain(evals)
            t_ezigen, t_plain = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                ezigen()
                t_ezigen.append(time.perf_counter() - t)
                t = time.perf_counter()
                plain(evals)
                t_plain.append(time.perf_counter() - t)
        e, p = min(t_ezigen), min(t_plain)
        ref = reference_unet_calls(args.steps, args.split, args.loops)
        print(f"{size:>6} {evals:>10} {ref:>9} {e:>9.2f} {p:>8.2f} {e / p:>6.3f}")

    # several subjects: two masked patches (left and right half) against one unmasked, same evaluations
    half = torch.zeros(1, 64, 64)
    half[..., :32] = 1.0
    two = apply_subject(apply_subject(model, encoder, subject, 1.0, 0.6, 1.0, half), encoder, subject, 1.0, 0.6, 1.0,
                        1.0 - half)
    for size in args.sizes:
        latent = torch.zeros(1, 4, size // 8, size // 8)
        settings = GenerationSettings(seed=0, steps=args.steps, split_ratio=args.split,
                                      policy=LoopPolicy(loops=args.loops))
        with torch.inference_mode():
            times = {"one": [], "two": []}
            for _ in range(args.repeats + 1):  # the first of each is a warm-up
                for name, m in (("one", patched), ("two", two)):
                    t = time.perf_counter()
                    run_generation(m, positive, negative, {"samples": latent}, vae, settings, loop_negative)
                    times[name].append(time.perf_counter() - t)
        one_s, two_s = min(times["one"][1:]), min(times["two"][1:])
        print(f"two masked subjects at {size}px: {two_s:.2f} s against one unmasked subject {one_s:.2f} s, "
              f"ratio {two_s / one_s:.3f}")

    # editing: UNet evaluations against the reference's (docs/method.md section 14)
    source = torch.rand(1, args.sizes[0], args.sizes[0], 3)
    mask = torch.zeros(args.sizes[0], args.sizes[0])
    mask[: args.sizes[0] // 2] = 1
    edit_settings = EditSettings(seed=0, steps=args.steps, split_ratio=args.split, policy=LoopPolicy(loops=args.loops),
                                 short_side=args.sizes[0])
    with torch.inference_mode():
        t = time.perf_counter()
        report = run_edit(patched, exceptional_prompt(clip), vae, edit_source(source, mask), positive, negative,
                          edit_settings).report
        edit_s = time.perf_counter() - t
    print(f"edit at {args.sizes[0]}px, {args.loops} rounds: {report['unet_evaluations']} CFG evaluations + "
          f"{report['inversion_evaluations']} inversion evaluations (batch 1) in {edit_s:.2f} s; the reference: "
          f"{report['reference_unet_evaluations']} CFG + {report['reference_inversion_evaluations']} inversion")
    return 0


if __name__ == "__main__":
    sys.exit(main())

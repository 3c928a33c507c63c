"""Benchmark: an EZIGen-SDXL sampling step against a plain SDXL KSampler step, and the subject's memory at 1024 px.

    python scripts/benchmark_sdxl.py [--sizes 64 128] [--steps 2] [--repeats 2] [--subject-resolution 1024]
        [--unet-dtype bf16|fp16|fp32|auto] [--checkpoint FILE] [--adapter FILE_OR_FOLDER]

Everything runs in this process on one loaded SDXL checkpoint (ComfyUI's own SDXL classes, full width) and one
EZIGen-SDXL adapter file: --checkpoint (e.g. sd_xl_base_1.0.safetensors) and --adapter; either one not given is a
random-weight stand-in (scripts/make_checkpoints.py). On a CPU the UNet's weights are bf16 by default (ComfyUI
would hold them in fp32: 10.3 GB), as the e2e tests' server runs it with --bf16-unet.

1. Step time, per latent size (--sizes): the same ComfyUI sampling (euler, cfg 7, --steps steps) with the plain
   MODEL and with the patched MODEL (subject on at every step), the subject encoded at the latent's size and at
   --subject-resolution; the best of --repeats after a warm-up, per step, and the ratio EZIGen / plain.
2. Memory: the subject encoded at --subject-resolution through the real UNet (its 70 features measured, not
   computed), then the keys/values the pack computes from it once per run (measured: the tensors themselves, and
   the process's resident memory before and after), against the doc's figures (ezigen-sdxl-flux.md A2).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import inprocess

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# ezigen-sdxl-flux.md A2: the 70 features of one subject at 1024 px
DOC_TOKENS_1024 = 102_400
DOC_VALUES_1024 = 104_857_600


def resident_bytes() -> int:
    """This process's resident memory now (psutil ships with ComfyUI)."""
    import psutil  # noqa: PLC0415

    return psutil.Process().memory_info().rss


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--subject-resolution", type=int, default=1024)
    parser.add_argument("--unet-dtype", choices=[*DTYPES, "auto"], default=None,
                        help="the UNet's weight dtype (default: bf16 on a CPU, ComfyUI's choice on a GPU)")
    inprocess.add_model_arguments(parser, base="SDXL")
    args = parser.parse_args(argv)

    inprocess.start("bench-sdxl")
    import comfy.model_management
    import comfy.sample

    from ezigen_lib.family import family_of
    from ezigen_lib.inject import apply_subject
    from ezigen_lib.subject_kv import SubjectKV

    device = comfy.model_management.get_torch_device()
    dtype_name = args.unet_dtype or ("bf16" if device.type == "cpu" else "auto")
    options = {} if dtype_name == "auto" else {"dtype": DTYPES[dtype_name]}
    bench = inprocess.load_bench(args, "speed and memory", kinds=("sdxl", "ezigen_sdxl"), model_options=options)
    model, encoder = bench.model, bench.encoder
    family = family_of(model)
    if family.name != "SDXL":
        raise SystemExit(f"{bench.checkpoint} is a {family.name} checkpoint; this benchmark wants SDXL")
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, checkpoint: {bench.checkpoint.name}, "
          f"UNet weights {model.model.get_dtype()}, {family.describe()}")

    positive, negative = bench.text("a dog on the beach"), bench.text("dark, blur")
    t = time.perf_counter()
    big = bench.subject(args.subject_resolution)
    big_s = time.perf_counter() - t
    print(f"subject encoding at {args.subject_resolution} px (1 UNet pass): {big_s:.1f} s")

    # 1. step time
    print(f"{'latent px':>9} {'subject px':>10} {'plain s/step':>12} {'ezigen s/step':>13} {'ratio':>6}")
    for size in args.sizes:
        latent = torch.zeros(1, 4, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 0)

        def sample(m) -> float:
            t = time.perf_counter()
            comfy.sample.sample(m, noise, args.steps, 7.0, "euler", "normal", positive, negative, latent,
                                disable_pbar=True, seed=0)
            return (time.perf_counter() - t) / args.steps

        subjects = {size: bench.subject(size), args.subject_resolution: big}
        with torch.inference_mode():
            sample(model)  # warm-up: loads everything once
            plain = min(sample(model) for _ in range(args.repeats))
            for subject_px, subject in subjects.items():
                patched = apply_subject(model, encoder, subject, 1.0, 0.0, 1.0)  # on at every step
                sample(patched)
                ezigen = min(sample(patched) for _ in range(args.repeats))
                print(f"{size:>9} {subject_px:>10} {plain:>12.2f} {ezigen:>13.2f} {ezigen / plain:>6.3f}")

    # 2. memory of the subject at --subject-resolution
    tokens = sum(big.token_counts)
    values = sum(f.numel() for f in big.features)
    feature_bytes = sum(f.numel() * f.element_size() for f in big.features)
    print(f"subject at {args.subject_resolution} px: {len(big.features)} features, {tokens:,} tokens, {values:,} "
          f"values, {mb(feature_bytes)} as stored ({big.features[0].dtype})")
    if args.subject_resolution == 1024:
        agree = "agree" if (tokens, values) == (DOC_TOKENS_1024, DOC_VALUES_1024) else "DISAGREE"
        print(f"  the doc's figures: {DOC_TOKENS_1024:,} tokens, {DOC_VALUES_1024:,} values: {agree}")
    compute = model.model.manual_cast_dtype or model.model.get_dtype()  # the dtype the UNet's tokens have
    comfy.model_management.load_models_gpu([encoder.adapter])
    kv = SubjectKV(encoder.adapter, big)
    before = resident_bytes()
    with torch.inference_mode():
        for layer in range(len(family.layers)):
            kv.get(layer, device, compute)
    grown = resident_bytes() - before
    kv_values = sum(k.numel() + v.numel() for k, v in kv.cache.values())
    kv_bytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv.cache.values())
    print(f"keys/values of the subject (once per run, {compute}): {kv_values:,} values, {mb(kv_bytes)} measured as "
          f"tensors, resident memory grew {mb(grown)}")
    print(f"  with CFG: the pack expands them to the batch without a copy ({mb(kv_bytes)}); a copy per CFG half, "
          f"as upstream duplicates the features, would hold {mb(2 * kv_bytes)}")
    kv.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # ezigen_lib; appended: the repo's nodes/ must not shadow ComfyUI's nodes.py

from ezigen_lib.host import bootstrap_inprocess  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--split", type=float, default=0.4)
    parser.add_argument("--loops", type=int, default=2)
    parser.add_argument("--subject-resolution", type=int, default=512)
    parser.add_argument("--checkpoint", type=Path, help="SD2.1-base checkpoint (default: random stand-in)")
    parser.add_argument("--adapter", type=Path, help="EZIGen adapter file or folder (default: random stand-in)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="ezigen-bench-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    bootstrap_inprocess(base, cpu=not torch.cuda.is_available())
    import comfy.model_management
    import comfy.sample
    import comfy.sd

    from ezigen_lib.autostop import LoopPolicy
    from ezigen_lib.capture import encode_subject
    from ezigen_lib.encoder import load_encoder
    from ezigen_lib.generate import GenerationSettings, run_generation
    from ezigen_lib.inject import apply_subject
    from ezigen_lib.edit import EditSettings, run_edit
    from ezigen_lib.inversion import exceptional_prompt
    from ezigen_lib.schedule import reference_unet_calls

    if args.checkpoint is None or args.adapter is None:
        import make_checkpoints
        print("[benchmark] RANDOM-WEIGHT STAND-INS (speed is what is measured, not pictures)", file=sys.stderr)
        made = make_checkpoints.make_all(only=("sd21base", "ezigen"))
        args.checkpoint = args.checkpoint or made["sd21base"]
        args.adapter = args.adapter or made["ezigen"]

    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(args.checkpoint))
    device = comfy.model_management.get_torch_device()
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, checkpoint: {args.checkpoint.name}")

    def text(prompt: str):
        return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))

    positive, negative = text("a dog on the beach"), text("dark, blur")
    loop_negative = text("")  # faithful mode's loops use the empty prompt, as the reference
    with torch.inference_mode():
        encoder = load_encoder(args.adapter, model)
        subject_image = torch.rand(1, args.subject_resolution, args.subject_resolution, 3)
        t = time.perf_counter()
        subject = encode_subject(model, vae, text("a dog")[0][0], subject_image, None, 0, args.subject_resolution,
                                 encoder.info.widths)
        encode_s = time.perf_counter() - t
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
        report = run_edit(patched, exceptional_prompt(clip), vae, source, mask, positive, negative, edit_settings).report
        edit_s = time.perf_counter() - t
    print(f"edit at {args.sizes[0]}px, {args.loops} rounds: {report['unet_evaluations']} CFG evaluations + "
          f"{report['inversion_evaluations']} inversion evaluations (batch 1) in {edit_s:.2f} s; the reference: "
          f"{report['reference_unet_evaluations']} CFG + {report['reference_inversion_evaluations']} inversion")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert an EZIGen checkpoint into a small adapter-only safetensors file.

    python -m ezigen_lib.convert CHECKPOINT_DIR_OR_FILE OUT.safetensors [--dtype fp16] [--residual single]

The official release stores the whole SD2.1-base UNet next to the adapters (about 3.5 GB); the
adapters alone are about 100 MB in fp16 and load faster. Upstream's SDXL run saves the whole main UNet as
``diffusion_pytorch_model.bin`` (or an accelerate checkpoint folder); its 70 adapters are about 820 MB in fp16.
The output records the family (from the layout) and the adapter residual, which weights cannot show: by
default the one upstream trained that family with (SD2.1: double, SDXL: single). Runs without ComfyUI.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from .checkpoint import AdapterFileError, load_adapter, save_adapter
from .family import RESIDUALS

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ezigen_lib.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="accelerate checkpoint folder, model.safetensors, pytorch_model.bin, "
                                           "diffusion_pytorch_model.bin, or an adapter file")
    parser.add_argument("out", help="output .safetensors (put it in ComfyUI/models/ezigen/)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--base-model", default=None,
                        help="base the adapter was trained for (default: from the file, else sd2.1-base)")
    parser.add_argument("--head-dim", type=int, default=None,
                        help="attention head width of the adapter (default: from the file, else 64)")
    parser.add_argument("--residual", choices=RESIDUALS, default=None,
                        help="how the adapter output joins its block: double = h1 + u + O (upstream's "
                             "residual_connection: true; SD2.1's release), single = h1 + O (false; upstream's SDXL "
                             "run). Default: from the file, else the family's")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error("OUT must end in .safetensors")
    try:
        weights = load_adapter(args.checkpoint)
        overrides = {k: v for k, v in (("base_model", args.base_model), ("head_dim", args.head_dim),
                                       ("residual", args.residual)) if v is not None}
        if overrides:
            weights.info = dataclasses.replace(weights.info, **overrides)
        if any(w % weights.info.head_dim for w in weights.info.widths):
            parser.error(f"--head-dim {weights.info.head_dim} does not divide the block widths {weights.info.widths}")
        out = save_adapter(weights, args.out, DTYPES[args.dtype])
    except AdapterFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size_mb = out.stat().st_size / 2**20
    info = weights.info
    print(f"wrote {out} ({size_mb:.1f} MiB, {args.dtype}, base {info.base_model}, family "
          f"{info.family or 'unknown'}, {len(info.widths)} layers, residual {info.residual}, head_dim {info.head_dim})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Input checks shared by the settings and the nodes.

ComfyUI 0.3.75 lets two kinds of bad widget values reach a node through its API: NaN and infinity
(JSON accepts NaN, and NaN passes every min/max comparison) and combo values outside the option list
(the host checks options only for V1 nodes). Both are refused here, before any work starts. So are
IMAGE and MASK inputs holding NaN or infinity (Solid Mask with value NaN, Image Blend with a NaN blend
factor): they would surface much later as an error that blames the model's precision or weights.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import EZIGenError, public_error, shown


@public_error
class InputValueError(EZIGenError, ValueError):
    """A widget value that cannot be used; the message names the input and what it accepts."""


def require_finite(name: str, value: float) -> float:
    """`value` as a float, or an error naming `name` when it is NaN, infinite or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputValueError(f"{name} must be a number, got {shown(value)}") from None
    if not math.isfinite(number):
        raise InputValueError(f"{name} must be a finite number, got {shown(value)}")
    return number


def require_choice(name: str, value: object, options: Sequence) -> None:
    if value not in options:
        raise InputValueError(f"{name} must be one of {', '.join(map(str, options))}; got {shown(value)}")


def require_range(name: str, value: float, low: float | None, high: float | None) -> None:
    """Finite and within [low, high] (either bound may be None)."""
    number = value if isinstance(value, int) else require_finite(name, value)  # ints: exact (seeds reach 2^64)
    if (low is not None and number < low) or (high is not None and number > high):
        raise InputValueError(f"{name} must be between {low} and {high}, got {shown(value)}")


def require_finite_pixels(node: str, name: str, values: torch.Tensor, kind: str) -> None:
    """Refuse an IMAGE (kind "IMAGE": (B, H, W, C), a pixel counts once whatever its channels) or MASK
    (kind "MASK": (..., H, W)) input holding NaN or infinity, naming the node, the input and how many
    pixels: NaN slips through clamp and every comparison, so later stages would fail far from the cause
    (a crop box of None, "the encoder's weights are damaged") or give a black image."""
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        return  # integer tensors cannot hold NaN; shapes are checked where they are used
    bad = ~torch.isfinite(values.detach())
    if kind == "IMAGE" and bad.ndim >= 1:
        bad = bad.any(dim=-1)
    count = int(bad.sum())
    if count == 0:
        return
    kinds = [label for label, present in (("NaN", bool(torch.isnan(values).any())),
                                          ("infinity", bool(torch.isinf(values).any()))) if present]
    article = "an" if kind == "IMAGE" else "a"
    raise InputValueError(
        f"{node}: the {name} input holds {' and '.join(kinds)} in {count:,} of its {bad.numel():,} pixels: "
        f"{article} {kind} holds numbers from 0 to 1. The node that made it was given NaN or infinity (e.g. Solid "
        "Mask's value or Image Blend's blend_factor sent by a script): give it a number.")


def latent_warnings(latent: dict) -> list[str]:
    """What the EZIGen Sampler ignores in a LATENT, said in its report instead of silently."""
    warnings = []
    if latent.get("noise_mask") is not None:
        warnings.append("The LATENT carries a noise_mask (SetLatentNoiseMask, VAEEncodeForInpaint): the EZIGen "
                        "Sampler regenerates the whole image and ignored it. To change only a region, use EZIGen "
                        "Edit with that mask.")
    return warnings

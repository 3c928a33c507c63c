"""Input checks shared by the settings and the nodes.

ComfyUI 0.3.75 lets two kinds of bad widget values reach a node through its API: NaN and infinity
(JSON accepts NaN, and NaN passes every min/max comparison) and combo values outside the option list
(the host checks options only for V1 nodes). Both are refused here, before any work starts. So are
IMAGE and MASK inputs holding NaN or infinity (Solid Mask with value NaN, Image Blend with a NaN blend
factor): they would surface much later as an error that blames the model's precision or weights.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import torch


ERROR_MODULE = "ezigen"
ECHO_LIMIT = 60  # characters of a user's value repeated in an error message


class EZIGenError(Exception):
    """The base of every exception the pack raises to a user (`except EZIGenError` catches any of them);
    each also keeps its standard base (ValueError, RuntimeError) for callers that catch those."""


EZIGenError.__module__ = ERROR_MODULE


def public_error(cls: type) -> type:
    """Make `cls` one of the pack's exceptions: derived from EZIGenError (as the class itself, when it does
    not name it among its bases: one declaration per error, whichever module holds it) and named under the
    stable module 'ezigen': ComfyUI reports an error's type as module + class name, and a custom node's module
    is its file path on the server, which clients should neither see nor depend on (they get
    'ezigen.InputValueError')."""
    if not issubclass(cls, EZIGenError):
        cls = type(cls.__name__, (cls, EZIGenError), {"__doc__": cls.__doc__, "__qualname__": cls.__qualname__})
    cls.__module__ = ERROR_MODULE
    return cls


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters: a value repeated in a message keeps the message short whatever
    its size (an API client may send a 200,000-character string)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)`, cut to `limit` characters (see `cut`). A string is cut before it is quoted, so the length
    said is the string's own (a 300-character name is "300 characters", not the 302 of its repr)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return cut(repr(value), limit)


@public_error
class InputValueError(ValueError):
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


# POSIX (/srv/comfy/models/x), Windows drive (C:\ComfyUI\models\x, C:/...) and UNC (\\server\share\x) paths; a
# Windows separator may come doubled, as an OSError's repr of the file name shows it.
_PATH_PART = r"[\w.@+-]+(?: [\w.@+-]+)*"  # a Windows folder name: inner spaces, never a trailing one
_WINDOWS_SEPARATOR = r"(?:\\{1,2}|/)"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*"
                            rf"|(?<!\w)[A-Za-z]:{_WINDOWS_SEPARATOR}(?:{_PATH_PART}{_WINDOWS_SEPARATOR})*[\w.@+-]*"
                            rf"|(?<![\w\\])\\{{2,4}}[\w.@+-]+(?:\\{{1,2}}{_PATH_PART}(?=\\))*(?:\\{{1,2}}[\w.@+-]*)?")


def exception_text(exc: BaseException, path: str | os.PathLike | None = None, shown: str = "the file",
                   limit: int = 300) -> str:
    """A library's error as users may see it: the file under its display name, no other absolute paths
    (server internals), and none of torch's advice to load with weights_only=False, which would run
    whatever code the file carries."""
    text = f"{type(exc).__name__}: {exc}"
    if path is not None:
        for variant in sorted({str(path), os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
            text = text.replace(variant, shown)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text)
    text = " ".join(s for s in sentences if "weights_only" not in s and "arbitrary code" not in s).strip()
    return text[:limit] + ("..." if len(text) > limit else "")

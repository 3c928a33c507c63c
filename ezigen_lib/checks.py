"""Input checks shared by the settings and the nodes.

ComfyUI 0.3.75 lets two kinds of bad widget values reach a node through its API: NaN and infinity
(JSON accepts NaN, and NaN passes every min/max comparison) and combo values outside the option list
(the host checks options only for V1 nodes). Both are refused here, before any work starts.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence


ERROR_MODULE = "ezigen"
ECHO_LIMIT = 60  # characters of a user's value repeated in an error message


def public_error(cls: type) -> type:
    """Give a pack exception the stable module name 'ezigen': ComfyUI reports an error's type as
    module + class name, and a custom node's module is its file path on the server, which clients
    should neither see nor depend on (they get 'ezigen.InputValueError')."""
    cls.__module__ = ERROR_MODULE
    return cls


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters: a value repeated in a message keeps the message short whatever
    its size (an API client may send a 200,000-character string)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)`, cut to `limit` characters (see `cut`)."""
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


def latent_warnings(latent: dict) -> list[str]:
    """What the EZIGen Sampler ignores in a LATENT, said in its report instead of silently."""
    warnings = []
    if latent.get("noise_mask") is not None:
        warnings.append("The LATENT carries a noise_mask (SetLatentNoiseMask, VAEEncodeForInpaint): the EZIGen "
                        "Sampler regenerates the whole image and ignored it. To change only a region, use EZIGen "
                        "Edit with that mask.")
    return warnings


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*")


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

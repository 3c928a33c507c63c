"""The core details EZIGen relies on beyond ComfyUI's declared API, checked where they are used.

The patch points hand every block a few undocumented details (``block``, ``block_index``,
``sigmas``, ``original_shape``, ``activations_shape``, ``cond_or_uncond`` in ``transformer_options``),
faithful mode hooks the KL VAE's posterior regularizer, and the schedule code calls a handful of
``model_sampling`` methods. A newer core could drop or rename any of them, and the pack would then quietly
do something else (skip a block, sample the mean, inject at every step). So each use checks its detail:
missing, the run stops with a `CoreChangedError` that names the piece and the ComfyUI version; where a
documented fallback exists, `note_fallback` says so once in the log and in the Sampler's or Edit's report
(``core_fallbacks``).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

from .errors import EZIGenError, public_error

log = logging.getLogger("EZIGen")

TESTED_RELEASES = "0.3.75, 0.8.0 and 0.28.2"


@public_error
class CoreChangedError(EZIGenError, RuntimeError):
    """A detail of ComfyUI's core that the pack relies on is missing or changed on this host."""


@functools.lru_cache(maxsize=1)
def comfyui_version() -> str:
    """The host's release: its ``comfyui_version`` module (both hosts have one at the ComfyUI root, on sys.path
    in a server and after `host.bootstrap_inprocess`), else the file read by `host.comfy_version`."""
    try:
        import comfyui_version as module  # noqa: PLC0415 - the host's own module, only where it exists

        return str(module.__version__)
    except (ImportError, AttributeError):
        pass
    try:
        from .host import comfy_version  # noqa: PLC0415

        return ".".join(map(str, comfy_version()))
    except (OSError, RuntimeError):
        return "unknown"


def core_changed(piece: str, purpose: str) -> CoreChangedError:
    """The error for a missing core detail: what is missing, what the pack needs it for, which ComfyUI."""
    return CoreChangedError(
        f"EZIGen relies on {piece} ({purpose}), which ComfyUI {comfyui_version()} does not provide: this core "
        f"changed a detail the pack uses, so the run was stopped rather than give a silently different result. "
        f"The pack is tested on ComfyUI {TESTED_RELEASES}: update ComfyUI-EZIGen, or report this message.")


def require_option(extra_options: dict, key: str, purpose: str) -> Any:
    """``extra_options[key]`` (what ComfyUI passes a block patch), or a `CoreChangedError` naming it."""
    value = extra_options.get(key)
    if value is None:
        raise core_changed(f"transformer_options['{key}'] in every transformer block", purpose)
    return value


def require_model_sampling(model_sampling, *attributes: str, purpose: str):
    """`model_sampling` after checking it has each of `attributes` (methods or values the pack reads)."""
    for name in attributes:
        if not hasattr(model_sampling, name):
            raise core_changed(f"model_sampling.{name} ({type(model_sampling).__name__})", purpose)
    return model_sampling


_logged: set[str] = set()
_collectors: list[list[str]] = []


def note_fallback(message: str) -> None:
    """A documented fallback was taken: logged once per process, listed in every report being collected."""
    if message not in _logged:
        _logged.add(message)
        log.warning("EZIGen: %s", message)
    for notes in _collectors:
        if message not in notes:
            notes.append(message)


@contextlib.contextmanager
def fallback_notes() -> Iterator[list[str]]:
    """Collect the fallbacks taken while the block runs (the Sampler's and Edit's ``core_fallbacks``)."""
    notes: list[str] = []
    _collectors.append(notes)
    try:
        yield notes
    finally:
        _collectors.remove(notes)

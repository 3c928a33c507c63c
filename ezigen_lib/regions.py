"""A subject's region: the optional MASK of Patch UNet Attention, placed on each block's token grid
(docs/method.md section 6)."""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from .errors import EZIGenError, public_error
from .input_checks import InputValueError, require_finite_pixels
from .core_details import core_changed, note_fallback, require_option
from .latent_views import VIEWS_KEY, LatentView

log = logging.getLogger("EZIGen")
NO_ACTIVATIONS_SHAPE = ("ComfyUI gives the blocks no transformer_options['activations_shape']: subject masks are "
                        "placed on the token grid derived from the latent's size (original_shape halved per level).")


def subject_region(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A MASK input -> (masks, H, W) float32 on the CPU, clamped to [0, 1]; refused when it is not a mask."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputValueError(f"The subject mask must be a MASK of shape (H, W) or (batch, H, W), got {shape}: "
                              "connect a mask (e.g. from Solid Mask, Load Image's mask, or a mask editor).")
    region = mask.detach().float().cpu()
    require_finite_pixels("Patch UNet Attention (EZIGen)", "mask", region, "MASK")
    region = region.clamp(0.0, 1.0)
    if region.ndim == 2:
        region = region[None]
    if not bool(region.any()):
        log.warning("EZIGen: the subject mask is empty (all zero): this subject will act nowhere.")
    return region.contiguous()


def resize_region(region: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(masks, H, W) -> (masks, h, w) stretched to the new frame. Area resizing gives each cell the share
    of it the mask covers, and keeps a mask of ones exactly one and of zeros exactly zero."""
    return F.interpolate(region[:, None], size=size, mode="area")[:, 0]


def block_grid(tokens: int, extra_options: dict) -> tuple[int, int]:
    """(h, w) of the block's token grid: the block's activations when the core says them, else the
    latent's size halved (rounding up, as the UNet's stride-2 convolutions do) until it fits."""
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) == 4 and shape[2] * shape[3] == tokens:
        return int(shape[2]), int(shape[3])
    if shape is None:
        note_fallback(NO_ACTIVATIONS_SHAPE)
    original = require_option(extra_options, "original_shape", f"the token grid of a block with {tokens} tokens, "
                                                               "to place the subject's mask on it")
    h, w = int(original[-2]), int(original[-1])
    while h * w > tokens:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w == tokens:
        return h, w
    raise core_changed(f"a block of {tokens} tokens on the latent {tuple(original)} halved by the UNet's "
                       "stride-2 convolutions (transformer_options['original_shape'])", "placing the subject's mask")


@public_error
class MaskPlacementError(EZIGenError, RuntimeError):
    """A model call whose part of the image is unknown, so a subject's mask cannot be placed on it."""


def placement_problem(reason: str) -> MaskPlacementError:
    return MaskPlacementError(f"EZIGen: a subject's mask (Patch UNet Attention) cannot be placed: {reason[:300]}. It "
                              "would land in the wrong place, so sampling stops: remove the mask, or the node that "
                              "crops the model input.")


def chunk_views(extra_options: dict, chunks: int) -> list[LatentView]:
    """The part of the whole latent each of the call's `chunks` conditionings sees (see latent_views.py)."""
    views = extra_options.get(VIEWS_KEY)
    if views is None:
        raise placement_problem("this model call does not come through ComfyUI's conditioning batches, so the part "
                                "of the image it sees is unknown")
    if views.problem:
        raise placement_problem(f"ComfyUI runs the model on {views.problem}")
    uuids = extra_options.get("uuids")
    if not uuids or len(uuids) != chunks or any(u not in views.by_uuid for u in uuids):
        raise placement_problem("the call does not say which conditioning each part of its batch belongs to")
    return [views.by_uuid[u] for u in uuids]


def view_region(region: torch.Tensor, view: LatentView) -> torch.Tensor:
    """The masks (masks, H, W) as the view sees them: stretched to the whole latent, cropped with it,
    and the view's latent items only when there is one mask per latent."""
    if view.items is not None and len(region) > 1:
        if max(view.items) >= len(region):
            raise InputValueError(f"The subject mask holds {len(region)} masks but the sampler runs latent "
                                  f"{max(view.items) + 1} of the batch: give one mask, or one per latent.")
        region = region[list(view.items)]
    if view.spatially_whole:
        return region
    placed = resize_region(region, view.size)
    if view.rows is not None:
        placed = placed[:, list(view.rows)]
    if view.cols is not None:
        placed = placed[:, :, list(view.cols)]
    return placed


def per_batch_item(masks: torch.Tensor, batch: int, chunks: int) -> torch.Tensor:
    """One mask for every UNet batch item: the UNet batch is `chunks` copies (cond, uncond, ...) of the
    latent batch, so masks[i] goes to latent i in every chunk."""
    if len(masks) == 1:
        return masks
    per_chunk = batch // chunks if batch % chunks == 0 else batch
    if len(masks) != per_chunk:
        raise InputValueError(f"The subject mask holds {len(masks)} masks but the latent batch is {per_chunk}: give "
                              "Patch UNet Attention one mask, or one mask per latent in the batch.")
    return masks.repeat(batch // per_chunk, 1, 1)


def share_outside(region: torch.Tensor, mask: torch.Tensor) -> float:
    """The share of a subject's region (masks, H, W) that lies where `mask` (1, h, w) is 0, in the mask's frame."""
    placed = resize_region(region, tuple(mask.shape[-2:])).mean(dim=0)
    total = float(placed.sum())
    return float((placed * (1.0 - mask[0].float().cpu())).sum()) / total if total > 0 else 0.0

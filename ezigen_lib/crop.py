"""Crop-and-stitch for EZIGen Edit: the box of the source that is edited (docs/method.md section 13).

Editing the whole source at short side 512 shrinks a 300 px region of a 2048 px render to 75 px of
work, and its detail is lost when scaled back. Editing a box around the mask instead keeps the region
at the model's native size, and the cost follows the region, not the source.

The box: the bounding box of every painted pixel (mask >= 0.5/255: an 8-bit mask's faintest level, 1/255, and so
a soft mask's faint edge are inside, a segmentation's haze of 1e-6 over the whole image is not), grown on
every side by `context` times the region's longer side, then, where the image has room, widened so the box is
at least short_side / MAX_SCALE_UP pixels on each side and at most MAX_ASPECT times as long as it is wide
(a tiny or thin region gets more of its surroundings instead of a 40x scale-up or a 400:1 strip), clamped to
the image, then shaped for the work size: its short side becomes `short_side` work pixels and its long side
is grown (centred, kept inside the image) until it is a multiple of 8 work pixels at the same scale, so the
box is scaled without distortion. Where the image is too narrow for that, the box takes the image's whole
extent on that axis and the work size is floored to a multiple of 8 (a stretch of under 8 work pixels, as
the whole-image path has). Several separate regions share one box around all of them: they are edited in
one pass, as on the whole image; for regions far apart, chain two EZIGen Edit nodes with a mask each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import public_error

CROP_MODES = ("around mask", "whole image")
# Each side grows by half the region's longer side: a square region fills half the box's side, about the share
# of the 512 px frame a subject takes in the reference's training images.
DEFAULT_CONTEXT = 0.5
# A mask value an 8-bit mask would store as 0 is not painted for the box (half of its smallest step, 1/255).
PAINTED_THRESHOLD = 0.5 / 255
# What EZIGen Edit may make of a source or box: at most 16 work pixels per source pixel and at most 16:1 (512 x
# 8192, the largest area at short side 512). Within the work-pixel limit a 1 px row at short side 64 became a
# 64 x 12,800 work area (434 s and 10.6 GiB on a CPU) that SD cannot render sensibly; a 32 px thumbnail edited
# at 512 is still allowed.
MAX_SCALE_UP = 16
MAX_ASPECT = 16


@public_error
class CropError(ValueError):
    pass


@dataclass(frozen=True)
class Box:
    """A rectangle of the source in pixels."""
    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.height, self.width]


def mask_bounds(mask: torch.Tensor, threshold: float = PAINTED_THRESHOLD) -> Box | None:
    """The bounding box of the pixels >= `threshold` of a (H, W) or (1, H, W) mask; None when nothing is painted.
    Why a threshold: a faint haze (1e-6 from a segmentation or a feathered brush) would make the box the whole
    image and silently shrink the region to the whole-image edit's detail."""
    painted = (mask.reshape(mask.shape[-2:]) >= threshold).cpu()
    rows, cols = torch.nonzero(painted.any(dim=1)), torch.nonzero(painted.any(dim=0))
    if len(rows) == 0:
        return None
    top, left = int(rows[0]), int(cols[0])
    return Box(top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1)


def _grow(start: int, extent: int, margin: int, limit: int) -> tuple[int, int]:
    """[start - margin, start + extent + margin) clamped to [0, limit): (start, extent)."""
    low, high = max(0, start - margin), min(limit, start + extent + margin)
    return low, high - low


def _widen(start: int, extent: int, wanted: int, limit: int) -> tuple[int, int]:
    """(start, extent) of a span of at least `wanted` pixels (at most `limit`) centred on [start, start + extent)."""
    wanted = min(wanted, limit)
    if wanted <= extent:
        return start, extent
    return _fit(start, extent, wanted, limit), wanted


def _fit(start: int, extent: int, wanted: int, limit: int) -> int:
    """The start of a span of `wanted` (>= extent) pixels centred on [start, start + extent), inside [0, limit)."""
    centred = start - (wanted - extent) // 2
    return min(max(0, centred), limit - wanted)


def crop_box(height: int, width: int, region: Box, short_side: int, context: float = DEFAULT_CONTEXT
             ) -> tuple[Box, tuple[int, int]]:
    """(the box to edit, its work size (h, w)) for `region` in a `height` x `width` source (see the module
    docstring). The box always contains the region grown by the context."""
    if not math.isfinite(context) or context < 0:
        raise CropError(f"crop_context must be a number >= 0 (a fraction of the region's size), got {context}")
    if short_side < 8:
        raise CropError(f"short_side must be at least 8 work pixels, got {short_side}")
    margin = math.ceil(context * max(region.height, region.width))
    top, box_h = _grow(region.top, region.height, margin, height)
    left, box_w = _grow(region.left, region.width, margin, width)
    work_short = short_side // 8 * 8
    least = math.ceil(work_short / MAX_SCALE_UP)  # where the image has room: no side scaled up over 16x,
    top, box_h = _widen(top, box_h, max(least, math.ceil(box_w / MAX_ASPECT)), height)  # none over 16:1
    left, box_w = _widen(left, box_w, max(least, math.ceil(box_h / MAX_ASPECT)), width)
    if box_h <= box_w:
        left, box_w, work_w = _shape_long_side(left, box_w, width, work_short / box_h)
        work = (work_short, work_w)
    else:
        top, box_h, work_h = _shape_long_side(top, box_h, height, work_short / box_w)
        work = (work_h, work_short)
    return Box(top, left, box_h, box_w), work


def _shape_long_side(start: int, extent: int, limit: int, scale: float) -> tuple[int, int, int]:
    """(start, extent, work extent) of the long side at `scale` work pixels per source pixel: the work extent the
    next multiple of 8, the source extent grown to match it; where the image is too short, all of it."""
    work = max(8, math.ceil(extent * scale / 8 - 1e-9) * 8)
    wanted = max(extent, round(work / scale))
    if wanted > limit:
        return 0, limit, max(8, math.floor(limit * scale / 8 + 1e-9) * 8)
    return _fit(start, extent, wanted, limit), wanted, work

"""EZIGen Edit's work area (`WorkArea`: the box of the source that is edited, the work size it is edited at, how
the result is pasted back), made and checked once per edit by `work_area`, for the crop-and-stitch box and the
whole image alike, with the limits on what may be edited; and the source's pixels taken into it (`work_inputs`,
ours or the reference's chain) and the edit's taken back out (`back_to_source`) (docs/method.md sections 11-12).

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

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .edit_source import EditInputError, EditSource
from .errors import EZIGenError, public_error

log = logging.getLogger("EZIGen")

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
# The reference edits the whole source at short side 512 whatever the settings.
REFERENCE_SHORT_SIDE = 512


@public_error
class CropError(EZIGenError, ValueError):
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


# The largest work size: the square the largest short_side (2048) gives. Scaling the short side alone has no
# bound on the long one (a 1 x 4096 source would be edited at 512 x 2,097,152 and exhaust the memory).
MAX_WORK_PIXELS = 2048 * 2048


def processing_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The reference's short-side-512 size, floored to the VAE's multiple of 8."""
    h, w = reference_size(height, width, short_side)
    return max(8, h // 8 * 8), max(8, w // 8 * 8)


def reference_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The short side scaled to `short_side`, the long side int(long * short_side / short) (the reference's W, H);
    refused beyond MAX_WORK_PIXELS."""
    scale = short_side / min(height, width)
    size = (short_side, int(width * scale)) if height <= width else (int(height * scale), short_side)
    if size[0] * size[1] > MAX_WORK_PIXELS:
        raise EditInputError(
            f"the source ({height} x {width}) at short_side {short_side} would be edited at {size[0]} x {size[1]} = "
            f"{size[0] * size[1]:,} pixels, more than EZIGen Edit's limit of {MAX_WORK_PIXELS:,} pixels (2048 x 2048): "
            "set crop to 'around mask' (only a box around the mask is edited) or lower short_side")
    require_work_shape(f"the source ({height} x {width})", height, width, size, short_side,
                       "set crop to 'around mask' or cut the source down to the region's surroundings first (e.g. "
                       "ImageCrop) and paste the edit back (ImageCompositeMasked)")
    return size


def require_work_shape(what: str, height: int, width: int, work: tuple[int, int], short_side: int,
                       fix: str) -> None:
    """Refuse to scale a source or box (`height` x `width` source pixels) up more than MAX_SCALE_UP times or to
    edit it at a `work` size more elongated than MAX_ASPECT:1: within the work-pixel limit, a 1 px row at short
    side 64 became a 64 x 12,800 work area that ran for minutes and that SD cannot render sensibly. Both are
    measured on the work size, which a box widened to the bounds meets exactly. `fix` says what else to
    change."""
    short, work_short, work_long = min(height, width), min(work), max(work)
    scale = work_short / short
    if scale > MAX_SCALE_UP:
        raise EditInputError(
            f"{what} is {short} px on its short side: at short_side {short_side} it would be scaled up {scale:.3g}x "
            f"(edited at {work[0]} x {work[1]}), more than EZIGen Edit's limit of {MAX_SCALE_UP}x, beyond which SD "
            f"only invents blur: use a source at least {math.ceil(work_short / MAX_SCALE_UP)} px on its short side "
            f"(short_side / {MAX_SCALE_UP}), or lower short_side")
    if work_long > MAX_ASPECT * work_short:
        raise EditInputError(
            f"{what} would be edited at {work[0]} x {work[1]}, {work_long / work_short:.3g}:1, more elongated than the "
            f"{MAX_ASPECT}:1 EZIGen Edit works on: {fix}")


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An IMAGE (B, H, W, C) at `size` (H, W): bicubic with antialiasing, clamped to [0, 1]; as is at that size."""
    if tuple(image.shape[1:3]) == size:
        return image
    out = F.interpolate(image.movedim(-1, 1), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1).movedim(1, -1)


def require_context(context: float) -> None:
    """crop_context, checked once where the edit's settings are made: a number >= 0."""
    if not math.isfinite(context) or context < 0:
        raise CropError(f"crop_context must be a number >= 0 (a fraction of the region's size), got {context}")


@dataclass(frozen=True)
class WorkArea:
    """Where EZIGen Edit works, made and checked once per edit (`work_area`): the box of the source it edits (the
    whole source when not cropped), the work size that box is edited at, and how the result goes back (`paste`)."""
    source_size: tuple[int, int]  # (H, W) of the source
    box: Box
    work_size: tuple[int, int]  # (h, w) work pixels, multiples of 8
    cropped: bool

    @property
    def share(self) -> float:
        """The box's share of the source's pixels (1.0 for the whole image)."""
        return self.box.height * self.box.width / (self.source_size[0] * self.source_size[1])

    def cut(self, pixels: torch.Tensor) -> torch.Tensor:
        """The box of an IMAGE (B, H, W, C) or MASK (B, H, W)."""
        rows, cols = self.box.slices
        return pixels[:, rows, cols]

    def paste(self, edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The source with `edited` (the box's result at any size) scaled to the box and blended in by the mask:
        every pixel outside the box, and outside the mask, is the source's own."""
        rows, cols = self.box.slices
        box_mask = mask[:, rows, cols, None]
        result = source.clone()
        result[:, rows, cols] = (source[:, rows, cols] * (1 - box_mask)
                                 + resize_image(edited, (self.box.height, self.box.width)) * box_mask)
        return result

    def report(self) -> str | dict:
        return {"box": self.box.as_list(), "work_size": list(self.work_size)} if self.cropped else "whole image"


def work_area(source_size: tuple[int, int], mask: torch.Tensor, short_side: int, context: float, crop: bool
              ) -> WorkArea:
    """The work area of an edit: a box around the mask's painted pixels (`crop`; the mask must have some), or
    the whole source at `short_side`; refused (EditInputError) where it would exceed the work-pixel, scale-up
    or aspect limits, with what to change."""
    height, width = source_size
    if not crop:
        return WorkArea(source_size, Box(0, 0, height, width), processing_size(height, width, short_side), False)
    try:
        box, work = crop_box(height, width, mask_bounds(mask), short_side, context)
    except CropError as error:
        raise EditInputError(str(error)) from None
    if work[0] * work[1] > MAX_WORK_PIXELS:
        raise EditInputError(
            f"the box around the mask ({box.height} x {box.width} source pixels) would be edited at {work[0]} x "
            f"{work[1]} = {work[0] * work[1]:,} pixels at short_side {short_side}, more than EZIGen Edit's "
            f"limit of {MAX_WORK_PIXELS:,} pixels (2048 x 2048): lower crop_context or short_side, or edit long thin "
            "or far apart regions one at a time (a mask each)")
    # The box was widened as far as the source allows: what is left is a source too small or thin.
    require_work_shape(f"the box around the mask ({box.height} x {box.width} source pixels, in a {height} x "
                       f"{width} source)", box.height, box.width, work, short_side,
                       f"the source leaves no room to widen it; mask a region at most {MAX_ASPECT} times as long as "
                       "the source's short side, or edit a long region in pieces (a mask each)")
    return WorkArea(source_size, box, work, True)


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


def faint_mask_warnings(mask: torch.Tensor, area: WorkArea) -> list[str]:
    """Say where a faint haze of the mask (values an 8-bit mask stores as 0) was left out of the box: those
    pixels stay the source's, which is what such values mean, but the user may have meant them (logged too)."""
    if not area.cropped:
        return []
    faint = (mask > 0) & (mask < PAINTED_THRESHOLD)
    rows, cols = area.box.slices
    faint[:, rows, cols] = False
    count = int(faint.sum())
    if count == 0:
        return []
    warning = (f"{count:,} pixels of the mask outside the crop box hold faint values (at most "
               f"{float(mask[faint].max()):.2g}, below 0.5/255, which an 8-bit mask stores as 0): the box was drawn "
               "around the painted pixels only and those stay the source's. Threshold the mask (e.g. "
               "ThresholdMask) or set crop to 'whole image' if they were meant.")
    log.warning("EZIGen Edit: %s", warning)
    return [warning]


# The source's pixels into the work area, and the edit's back out.

@dataclass(frozen=True)
class WorkInputs:
    """The source at the work size, the mask on the latent grid, the size of the result, and whether they were
    made by the reference's own chain (`reference_inputs`), which takes the result back its own way."""
    image: torch.Tensor
    latent_mask: torch.Tensor
    result_size: tuple[int, int]
    reference: bool = False


def work_inputs(source: EditSource, area: WorkArea, reference: bool) -> WorkInputs:
    """The edit's inputs at the work size: ours (`area`'s box of the source resized to its work size, the mask as
    given, soft or hard, bilinearly), or the reference's chain (`reference_inputs`)."""
    if reference:
        return reference_inputs(source)
    image, mask, size = area.cut(source.image), area.cut(source.mask), area.work_size
    work_mask = F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    latent_mask = F.interpolate(work_mask[:, None], size=(size[0] // 8, size[1] // 8), mode="bilinear",
                                align_corners=False)
    return WorkInputs(resize_image(image, size), latent_mask, size)


def reference_inputs(source: EditSource) -> WorkInputs:
    """The reference's own chain, step for step (PIL as it uses it): the 8-bit source and mask resized
    with PIL's bicubic filter to short side 512; only mask pixels still 255 count; that 0/1 uint8 mask
    squashed to 512x512 by cv2's bilinear resize, which rounds back to 0/1, and interpolated to the
    latent grid. Its VAE floors a size that is not a multiple of 8, keeping the top-left latents, so
    the extra right and bottom pixels are dropped here. The result is the decoded work image resized
    back to that short-512 size, with no compositing."""
    height, width = reference_size(*source.size, REFERENCE_SHORT_SIDE)
    work_image = pil_resize(source.image[0], (height, width))[None]
    mask = source.mask[0, :, :, None].expand(-1, -1, 3)
    work_mask = (pil_resize(mask, (height, width))[..., 0] == 1.0).float()[None]
    square = _binary_linear_resize(work_mask, (REFERENCE_SHORT_SIDE,) * 2)
    latent_mask = F.interpolate(square[:, None], size=(height // 8, width // 8), mode="bilinear", align_corners=False)
    return WorkInputs(work_image[:, :height // 8 * 8, :width // 8 * 8], latent_mask, (height, width), reference=True)


def _binary_linear_resize(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) of a 0/1 uint8 mask: the result is 0/1 again. Where one side keeps its
    size, as in the reference's squash of a short-512 mask, cv2's fixed-point arithmetic comes to the
    bilinear value rounded with halves up (checked against cv2 in test_faithful.py)."""
    return (F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] >= 0.5).float()


def pil_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> 8-bit -> PIL bicubic resize to (height, width) -> (h, w, 3) in [0, 1]."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    resized = Image.fromarray(pixels, "RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized).copy()).float() / 255


def back_to_source(decoded: torch.Tensor, source: EditSource, work: WorkInputs, area: WorkArea,
                   output_size: str) -> torch.Tensor:
    """The edit's result. The reference returns the decoded work image at its short-512 size; output_size
    'reference' the decoded work image as is; ours ('source') pastes the edit into the source at the source size
    (pixels outside the mask exactly the source's), into the box when cropped (pixels outside the box are the
    source's own, untouched)."""
    if work.reference:
        return pil_resize(decoded[0], work.result_size)[None]
    if output_size != "source":
        return decoded
    return area.paste(decoded, source.image, source.mask)

"""What EZIGen Edit edits: one source image and its mask, checked and brought to one form once, at the node's
edge, so that the edit itself never meets a batch, an alpha channel or a NaN (docs/method.md section 11)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import EZIGenError, public_error
from .input_checks import require_finite_pixels

NODE = "EZIGen Edit"


@public_error
class EditInputError(EZIGenError, ValueError):
    """An EZIGen Edit input that cannot be edited (its shape, size or the work area it would need)."""


@dataclass(frozen=True)
class EditSource:
    """The source (1, H, W, 3) in [0, 1] and its mask (1, H, W) in [0, 1], the same size."""
    image: torch.Tensor
    mask: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the source."""
        return tuple(self.image.shape[1:3])

    def hard(self) -> EditSource:
        """Only fully painted pixels kept (the reference's == 255 threshold on an 8-bit mask)."""
        return EditSource(self.image, (self.mask >= 0.999).float())


def edit_source(image: torch.Tensor, mask: torch.Tensor) -> EditSource:
    """Source (1,H,W,3|4) and mask (H,W) or (1,H,W) of the same size, as an EditSource; NaN or infinity in
    either is refused first, by input name (the alpha channel is ignored, so it is not checked)."""
    require_finite_pixels(NODE, "image", image[..., :3] if image.ndim == 4 else image, "IMAGE")
    require_finite_pixels(NODE, "mask", mask, "MASK")
    if image.ndim != 4 or image.shape[0] != 1:
        raise EditInputError(f"edit one source image at a time: got an IMAGE batch of shape {tuple(image.shape)} "
                             "(use ImageFromBatch to pick one)")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise EditInputError(f"the mask must be a single-channel MASK (H,W) or (1,H,W), got shape {tuple(mask.shape)} "
                             "(convert an image with ImageToMask)")
    if mask.shape[0] != 1:
        raise EditInputError(f"one mask per edit: got a MASK batch of {mask.shape[0]}")
    if mask.shape[1:] != image.shape[1:3]:
        if not bool(mask.any()):  # LoadImage gives a blank 64x64 MASK for a photo without a painted area
            raise EditInputError(
                f"no region is painted: the mask is empty ({tuple(mask.shape[1:])}, all zero) while the source is "
                f"{tuple(image.shape[1:3])} (H, W). Right-click the Load Image node, open in MaskEditor and paint "
                "where the subject goes, then save; or connect a MASK of the source's size (e.g. from a "
                "segmentation node) to EZIGen Edit's mask input")
        raise EditInputError(f"mask size {tuple(mask.shape[1:])} differs from the source size "
                             f"{tuple(image.shape[1:3])} (H, W): paint the mask on the source or resize it to the "
                             "source")
    return EditSource(image[..., :3].float(), mask.float().clamp(0, 1))

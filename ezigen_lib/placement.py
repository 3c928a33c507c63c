"""Where a subject acts: its mask placed on each block's token grid, and the part of the image it reached.

The region math (resizing, a conditioning's view, the batch rows) is regions.py's; this holds one subject's
mask with its per-run placements (`Placement`) and the cells it was evaluated on (`Reach`, for the report).
"""
from __future__ import annotations

import torch

from .core_details import require_option
from .latent_views import VIEWS_KEY, LatentView
from .regions import block_grid, chunk_views, per_batch_item, placement_problem, resize_region, view_region


class Placement:
    """A subject's mask, (masks, H, W) in [0, 1] on the CPU, or None: everywhere."""

    def __init__(self, mask: torch.Tensor | None):
        self.mask = mask
        self.acts_somewhere = mask is None or bool(mask.any())  # resizing keeps a non-zero mask non-zero
        self._cache: dict[tuple, torch.Tensor] = {}

    def cropped(self, rows: slice, cols: slice, source_size: tuple[int, int]) -> Placement:
        """The mask stretched to a `source_size` image and cut to its box (crop-and-stitch edits the box only)."""
        return Placement(resize_region(self.mask, source_size)[:, rows, cols].contiguous())

    def release(self) -> None:
        self._cache.clear()

    def weights(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor | None:
        """The mask on this block's token grid, one row per UNet batch item: (B or 1, HW, 1); None
        without a mask. Each conditioning's part of the batch gets the mask as its part of the image
        sees it (a conditioning area or context window crops the model input: latent_views.py), so the mask
        follows the image; a call whose part of the image is unknown is refused (MaskPlacementError).
        Area resizing keeps a mask of ones exactly one and of zeros exactly zero."""
        if self.mask is None:
            return None
        if len(self.mask) > 1:  # one mask per latent: which rows of the block belong to which latent
            require_option(extra_options, "cond_or_uncond", "which latent of the batch each row of a block "
                                                            "belongs to, for one subject mask per latent")
        chunks = len(extra_options.get("uuids") or extra_options.get("cond_or_uncond") or [0])
        views = tuple(chunk_views(extra_options, chunks))
        seen = require_option(extra_options, "original_shape", "the size of the model input a subject mask is placed on")
        for view in views:
            if tuple(int(s) for s in seen[-2:]) != view.shape:
                shown = f"{seen[-2]}x{seen[-1]}"
                raise placement_problem(f"the model input is {shown} where ComfyUI's conditioning batch holds "
                                        f"{view.shape[0]}x{view.shape[1]} latent cells (another node crops or tiles "
                                        "the model input)")
        grid = block_grid(x.shape[1], extra_options)
        key = (grid, x.device, x.dtype, views, x.shape[0])
        rows = self._cache.get(key)
        if rows is None:
            rows = self._rows(views, grid, x.shape[0]).to(x.device, x.dtype)
            self._cache[key] = rows
        return rows

    def _rows(self, views: tuple[LatentView, ...], grid: tuple[int, int], batch: int) -> torch.Tensor:
        if len(set(views)) == 1:  # every chunk sees the same part: one placement, shared
            placed = resize_region(view_region(self.mask, views[0]), grid)
            return per_batch_item(placed.reshape(len(placed), -1, 1), batch, len(views))
        per_chunk = batch // len(views)
        rows = []
        for view in views:
            placed = resize_region(view_region(self.mask, view), grid)
            rows.append(per_batch_item(placed.reshape(len(placed), -1, 1), per_chunk, 1).expand(per_chunk, -1, -1))
        return torch.cat(rows)


class Reach:
    """The cells of the whole latent that model calls evaluated with the subject on, per whole latent size."""

    def __init__(self):
        self._seen: dict[tuple[int, int], torch.Tensor] = {}

    def note(self, extra_options: dict) -> None:
        """Record the cells this call evaluates (its conditionings' views of the latent)."""
        views = extra_options.get(VIEWS_KEY)
        if views is None or views.problem:
            return
        for uuid in extra_options.get("uuids") or ():
            view = views.by_uuid.get(uuid)
            if view is not None:
                seen = self._seen.get(view.size)
                cells = view.cells()
                self._seen[view.size] = cells if seen is None else seen | cells

    def reset(self) -> None:
        self._seen.clear()

    @property
    def acted(self) -> bool:
        """Whether the subject was switched on in a model call since `reset`."""
        return bool(self._seen)

    def share(self, mask: torch.Tensor | None) -> float:
        """The share of the image the subject acted on since `reset`: its mask's weight (1 without a mask) over
        the cells evaluated with it on (conditioning areas and context windows leave cells out); 0 if never."""
        share = 0.0
        for size, seen in self._seen.items():
            weight = torch.ones(1, *size) if mask is None else resize_region(mask, size)
            share = max(share, float((weight * seen).mean()))
        return share

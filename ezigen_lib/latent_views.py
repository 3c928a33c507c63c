"""Which part of the latent each model call sees, so that a subject's mask follows the image (issue 20).

ComfyUI's sampling code (0.3.75 to 0.28.2, comfy/samplers.py and comfy/context_windows.py) runs the
model on part of the latent in two ways:

- a conditioning's area (ConditioningSetArea, ConditioningSetAreaPercentage, ConditioningSetMask with
  set_cond_area "mask bounds"; all resolved to latent cells before sampling): the model input of that
  conditioning is the latent cropped to the area;
- context windows (ContextWindowsManual, WAN Context Windows): the model sees a subset of the indices
  of one dimension (the latent batch, or the image's height or width). Since ComfyUI 0.22 a window that
  does not start at index 0 is run with one more index in front of its list, the one just before it (the
  causal anchor, `causal_window_fix`, on by default), and that index's output is dropped afterwards; and
  the positions of the handler's `latent_retain_index_list` hold the whole latent's same indices instead.

The UNet only hears the cropped shape (`original_shape`). Two keyed wrappers, public ModelPatcher hooks,
tell the subject patch the rest through transformer_options: PREDICT_NOISE records the whole latent's
shape (the sampler's x), and CALC_COND_BATCH records, per conditioning (its uuid, which the core passes to
every block as `uuids`), the rows, columns and batch items of the whole latent its model input holds.
Where these cannot be known, the views carry a `problem` and the patch refuses to guess.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

WHOLE_SHAPE_KEY = "ezigen_whole_latent_shape"
VIEWS_KEY = "ezigen_latent_views"
WRAPPER_KEY = "ezigen_latent_views"


@dataclass(frozen=True)
class LatentView:
    """The part of the whole latent, (H, W) = `size`, that one conditioning's model input holds:
    its `rows` and `cols` (None = all, in order) and latent batch `items` (None = all, in order)."""
    size: tuple[int, int]
    rows: tuple[int, ...] | None = None
    cols: tuple[int, ...] | None = None
    items: tuple[int, ...] | None = None

    @property
    def spatially_whole(self) -> bool:
        return self.rows is None and self.cols is None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the model input this view gives."""
        return (self.size[0] if self.rows is None else len(self.rows),
                self.size[1] if self.cols is None else len(self.cols))

    def cells(self) -> torch.Tensor:
        """(H, W) bool: the cells of the whole latent this view holds."""
        seen = torch.zeros(self.size, dtype=torch.bool)
        rows = slice(None) if self.rows is None else torch.tensor(self.rows)
        cols = slice(None) if self.cols is None else torch.tensor(self.cols)
        if self.rows is not None and self.cols is not None:
            seen[rows[:, None], cols[None, :]] = True
        else:
            seen[rows, cols] = True
        return seen


@dataclass(frozen=True)
class LatentViews:
    """One conditioning batch's views by conditioning uuid; `problem` says why they are unknown."""
    by_uuid: dict = field(default_factory=dict)
    problem: str | None = None


def _with_transformer_option(model_options: dict, key: str, value) -> dict:
    """A copy of `model_options` whose transformer_options (also copied) carry `key`; the caller's are untouched."""
    options = dict(model_options)
    transformer_options = dict(options.get("transformer_options", {}))
    transformer_options[key] = value
    options["transformer_options"] = transformer_options
    return options


def record_whole_shape(executor, *args, **kwargs):
    """PREDICT_NOISE wrapper: (x, timestep, model_options, seed); x is the whole latent being sampled."""
    if len(args) >= 3 and isinstance(args[0], torch.Tensor) and isinstance(args[2], dict):
        args = (args[0], args[1], _with_transformer_option(args[2], WHOLE_SHAPE_KEY, tuple(args[0].shape)), *args[3:])
    return executor(*args, **kwargs)


def record_views(executor, *args, **kwargs):
    """CALC_COND_BATCH wrapper: (model, conds, x_in, timestep, model_options)."""
    if len(args) >= 5 and isinstance(args[2], torch.Tensor) and isinstance(args[4], dict):
        handler = args[4].get("context_handler")
        retained = tuple(int(i) for i in getattr(handler, "latent_retain_index_list", None) or ())
        views = latent_views(args[1], args[2], args[4].get("transformer_options", {}), retained)
        args = (*args[:4], _with_transformer_option(args[4], VIEWS_KEY, views), *args[5:])
    return executor(*args, **kwargs)


def add_view_wrappers(patcher) -> None:
    """Register both wrappers on `patcher` once (several subject patches share them)."""
    from comfy.patcher_extension import WrappersMP

    for kind, wrapper in ((WrappersMP.PREDICT_NOISE, record_whole_shape), (WrappersMP.CALC_COND_BATCH, record_views)):
        if not patcher.get_wrappers(kind, WRAPPER_KEY):
            patcher.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)


def window_indices(window, retained: tuple[int, ...] = ()) -> tuple[int, ...] | None:
    """The indices of the windowed dimension the model input holds, in order: the window's list, behind the
    causal anchor where the core put one in front (ComfyUI >= 0.22, `causal_anchor_index`), with the positions
    in `retained` (the handler's `latent_retain_index_list`) holding those same indices; None if unknown."""
    indices = getattr(window, "index_list", None)
    if indices is None:
        return None
    anchor = getattr(window, "causal_anchor_index", None)
    in_front = [int(anchor)] if isinstance(anchor, int) and anchor >= 0 else []
    held = in_front + [int(i) for i in indices]
    for position in retained:
        if 0 <= position < len(held):
            held[position] = position
    return tuple(held)


def _window_view(window, x_in: torch.Tensor, whole_shape,
                 retained: tuple[int, ...]) -> tuple[LatentView | None, str | None]:
    """The view of the conditioning batch's input `x_in` when a context window took it from the whole latent."""
    height, width = int(x_in.shape[-2]), int(x_in.shape[-1])
    dim, indices = getattr(window, "dim", None), window_indices(window, retained)
    if not isinstance(dim, int) or indices is None or x_in.shape[dim] != len(indices):
        return None, ("a context window whose dimension and indices do not match the model input "
                      f"{tuple(x_in.shape)}")
    if dim == 0:
        return LatentView((height, width), items=indices), None
    if dim == 1:  # channels: the image is whole
        return LatentView((height, width)), None
    if whole_shape is None or len(whole_shape) != 4:
        return None, (f"context windows over the image's {'height' if dim == 2 else 'width'} (dim {dim}), and the "
                      "whole latent's size is unknown (the model is not run by a ComfyUI sampler's guider)")
    size = (int(whole_shape[2]), int(whole_shape[3]))
    return (LatentView(size, rows=indices) if dim == 2 else LatentView(size, cols=indices)), None


def _area_view(view: LatentView, area, height: int, width: int) -> LatentView | None:
    """`view` cropped by a resolved conditioning area (sizes then offsets, in latent cells, last two
    dimensions the image's), the way the core narrows the model input; None if it is not such an area."""
    if not isinstance(area, (tuple, list)) or len(area) % 2 or not all(isinstance(a, int) for a in area):
        return None
    half = len(area) // 2
    sizes, offsets = list(area[:half]), list(area[half:])
    if half < 2:  # an area over the last dimension only: the others are whole
        sizes, offsets = [None] * (2 - half) + sizes, [0] * (2 - half) + offsets
    spans = []
    for size, offset, length in zip(sizes[:2], offsets[:2], (height, width)):
        size = length if size is None else min(length - offset, size)
        spans.append(range(offset, offset + size))
    rows = tuple(range(view.size[0]) if view.rows is None else view.rows)
    cols = tuple(range(view.size[1]) if view.cols is None else view.cols)
    new_rows, new_cols = tuple(rows[i] for i in spans[0]), tuple(cols[i] for i in spans[1])
    return LatentView(view.size, None if new_rows == rows and view.rows is None else new_rows,
                      None if new_cols == cols and view.cols is None else new_cols, view.items)


def latent_views(conds, x_in: torch.Tensor, transformer_options: dict, retained: tuple[int, ...] = ()) -> LatentViews:
    """The view of every conditioning in `conds` (a list per cond/uncond, as the core batches them); `retained`:
    the context handler's `latent_retain_index_list`."""
    if x_in.ndim != 4:
        return LatentViews(problem=f"a {x_in.ndim}-dimensional input {tuple(x_in.shape)}, not an image latent "
                                   "(batch, channels, height, width)")
    height, width = int(x_in.shape[-2]), int(x_in.shape[-1])
    whole_shape = transformer_options.get(WHOLE_SHAPE_KEY)
    window = transformer_options.get("context_window")
    if window is not None and isinstance(getattr(window, "dim", None), int) \
            and 0 <= window.dim < x_in.ndim and x_in.shape[window.dim] == len(window_indices(window) or ()):
        base, problem = _window_view(window, x_in, whole_shape, retained)
        if problem:
            return LatentViews(problem=problem)
    else:
        if whole_shape is not None and tuple(whole_shape[-2:]) != (height, width):
            return LatentViews(problem=f"a {height}x{width} part of the {whole_shape[-2]}x{whole_shape[-1]} latent, "
                                       "cut by something other than a conditioning area or a context window")
        base = LatentView((height, width))
    by_uuid = {}
    for cond_list in conds:
        for cond in cond_list or ():
            if not isinstance(cond, dict) or "uuid" not in cond:
                continue
            view = base
            if cond.get("area") is not None:
                view = _area_view(base, cond["area"], height, width)
                if view is None:
                    return LatentViews(problem=f"a conditioning area {str(cond['area'])[:60]} that is not in latent "
                                               "cells")
            by_uuid[cond["uuid"]] = view
    return LatentViews(by_uuid)

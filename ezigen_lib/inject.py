"""Injection: a list-based ``middle_patch`` that adds the adapter's output right after each
block's self-attention (before cross-attention), where the reference inserts it (docs/method.md
sections 4 and 6)."""
from __future__ import annotations

import copy

import torch
from comfy.patcher_extension import WrappersMP

from .capture import SubjectFeatures
from .checks import InputValueError, cut, require_finite
from .core import note_fallback, require_model_sampling, require_option
from .family import Family, model_family_name, require_adapter_fits
from .frames import VIEWS_KEY, LatentView, add_view_wrappers
from .regions import (block_grid, chunk_views, per_batch_item, placement_problem, resize_region, subject_region,
                      view_region)
from .schedule import appearance_start_index

KV_WRAPPER_KEY = "ezigen_subject_kv"
INJECT = "where Patch UNet Attention injects the subject"
NO_SCHEDULE = ("ComfyUI gives the blocks no transformer_options['sample_sigmas'] (the whole schedule): Patch UNet "
               "Attention gates the subject by noise level (start_percent/end_percent as ComfyUI's sampling "
               "percents) instead of the reference's step rule. The EZIGen Sampler and Edit are not affected.")
ALWAYS_ON = (float("inf"), 0.0)
NEVER_ON = (-1.0, -1.0)


class SubjectInjection:
    """The patch object ComfyUI calls in every transformer block.

    Shared, not copied, between model clones (``__deepcopy__``): it is immutable apart from the
    per-run cache of subject keys/values, which the OUTER_SAMPLE wrapper drops after each run.
    """

    def __init__(self, adapter_patcher, family: Family, subject: SubjectFeatures, strength: float,
                 start_percent: float, end_percent: float, model_sampling, region: torch.Tensor | None = None):
        self.adapter_patcher = adapter_patcher
        self.family = family  # of the patched model: which adapter each block takes
        self.subject = subject
        self.strength = float(strength)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.model_sampling = model_sampling
        # without a known schedule: active while sigma_end <= sigma <= sigma_start
        self.sigma_start, self.sigma_end = percent_sigma_range(model_sampling, start_percent, end_percent)
        self.window: tuple[float, float] | None = None  # set by `with_window` only
        self.region = region  # (masks, H, W) in [0, 1] on the CPU, or None: everywhere
        self.acts_somewhere = region is None or bool(region.any())  # resizing keeps a non-zero mask non-zero
        self._kv_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._region_cache: dict[tuple, torch.Tensor] = {}
        self._reach: dict[tuple[int, int], torch.Tensor] = {}  # whole latent size -> cells evaluated with it on

    # ComfyUI patch-object protocol -------------------------------------------------------------
    def to(self, device_or_dtype):
        return self

    def models(self):
        return [self.adapter_patcher]

    def __deepcopy__(self, memo):
        return self

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        try:
            return executor(*args, **kwargs)
        finally:
            self.release_cache()

    def release_cache(self) -> None:
        self._kv_cache.clear()
        self._region_cache.clear()

    def cleanup(self) -> None:
        """Patch-object protocol of newer cores (called after sampling, like ControlNet's): drop the
        per-run subject keys/values so no device tensors outlive the run."""
        self.release_cache()

    # the gate -------------------------------------------------------------------------------------
    def with_window(self, window: tuple[float, float]) -> SubjectInjection:
        """This subject gated by a fixed sigma window (on while window[1] <= sigma <= window[0]) in place
        of its percents: how the EZIGen Sampler and Edit switch the adapter on at exactly their own
        steps (`ALWAYS_ON`, `NEVER_ON`, the appearance stage). Shares the adapter and the per-run cache."""
        gated = copy.copy(self)
        gated.window = window
        return gated

    def with_region(self, region: torch.Tensor | None) -> SubjectInjection:
        """This subject acting in `region` instead (a crop of its own mask); shares the adapter and cache."""
        placed = copy.copy(self)
        placed.region = region
        placed.acts_somewhere = region is None or bool(region.any())
        placed._region_cache = {}
        placed._reach = {}  # where it acts is counted on its own grid (the box's), not on the whole image's
        return placed

    def active_mask(self, sigmas: torch.Tensor | None, batch: int,
                    schedule: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-sample gate (None = all on); the UNet batch is the latent batch times the cond chunks.

        A fixed `window` wins; else a whole schedule gates by step index as the reference does;
        else the sigma window of the percents."""
        if sigmas is None:
            return None
        sigmas = sigmas.flatten().float()
        on = self._step_gate(sigmas, schedule) if self.window is None else None
        if on is None:
            sigma_start, sigma_end = self.window or (self.sigma_start, self.sigma_end)
            on = (sigmas <= sigma_start) & (sigmas >= sigma_end)
        if batch % on.numel() == 0:
            return on.repeat(batch // on.numel())
        return on.any().expand(batch)

    def _step_gate(self, sigmas: torch.Tensor, schedule: torch.Tensor | None) -> torch.Tensor | None:
        """On at step i iff (1 - s) N < i + 1 in float arithmetic, s = 1 - start_percent (the reference's
        skip_adapter_ratio rule), for a schedule that starts at the top of the noise range (not the
        tail of a denoise < 1 run, where the percents keep their ComfyUI meaning of noise levels)."""
        if schedule is None:
            note_fallback(NO_SCHEDULE)
            return None
        if len(schedule) < 2:
            return None
        levels = schedule[:-1].flatten().float().cpu()
        steps = len(levels)
        if float(levels[0]) < float(self.model_sampling.percent_to_sigma(1.0 / steps)):
            return None
        match = torch.isclose(sigmas.cpu()[:, None], levels[None], rtol=1e-4, atol=0.0)
        if not bool(match.any(dim=1).all()):
            return None
        index = match.float().argmax(dim=1)
        first = appearance_start_index(steps, 1.0 - self.start_percent)
        stop = appearance_start_index(steps, 1.0 - self.end_percent)
        return ((index >= first) & (index < stop)).to(sigmas.device)

    def subject_kv(self, slot: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (slot, device, dtype)
        cached = self._kv_cache.get(key)
        if cached is None:
            features = self.subject.features[slot].to(device=device, dtype=dtype)
            cached = self.adapter_patcher.model.subject_kv(slot, features)
            self._kv_cache[key] = cached
        return cached

    # the region --------------------------------------------------------------------------------
    def region_weights(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor | None:
        """The region mask on this block's token grid, one row per UNet batch item: (B or 1, HW, 1); None
        without a region. Each conditioning's part of the batch gets the mask as its part of the image
        sees it (a conditioning area or context window crops the model input: frames.py), so the mask
        follows the image; a call whose part of the image is unknown is refused (MaskPlacementError).
        Area resizing keeps a mask of ones exactly one and of zeros exactly zero."""
        if self.region is None:
            return None
        if len(self.region) > 1:  # one mask per latent: which rows of the block belong to which latent
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
        rows = self._region_cache.get(key)
        if rows is None:
            rows = self._region_rows(views, grid, x.shape[0]).to(x.device, x.dtype)
            self._region_cache[key] = rows
        return rows

    def _region_rows(self, views: tuple[LatentView, ...], grid: tuple[int, int], batch: int) -> torch.Tensor:
        if len(set(views)) == 1:  # every chunk sees the same part: one placement, shared
            placed = resize_region(view_region(self.region, views[0]), grid)
            return per_batch_item(placed.reshape(len(placed), -1, 1), batch, len(views))
        per_chunk = batch // len(views)
        rows = []
        for view in views:
            placed = resize_region(view_region(self.region, view), grid)
            rows.append(per_batch_item(placed.reshape(len(placed), -1, 1), per_chunk, 1).expand(per_chunk, -1, -1))
        return torch.cat(rows)

    # where the subject acted -------------------------------------------------------------------
    def note_reach(self, extra_options: dict) -> None:
        """Record the cells of the whole latent this call evaluates with the subject on (for the report)."""
        views = extra_options.get(VIEWS_KEY)
        if views is None or views.problem:
            return
        for uuid in extra_options.get("uuids") or ():
            view = views.by_uuid.get(uuid)
            if view is not None:
                seen = self._reach.get(view.size)
                cells = view.cells()
                self._reach[view.size] = cells if seen is None else seen | cells

    def reset_reach(self) -> None:
        self._reach.clear()

    @property
    def acted(self) -> bool:
        """Whether the subject was switched on in a model call since `reset_reach`."""
        return bool(self._reach)

    def acted_share(self) -> float:
        """The share of the image this subject acted on since `reset_reach`: its mask's weight (1 without
        a mask) over the cells the model evaluated with the subject on (conditioning areas and context
        windows leave cells out); 0 where it never acted."""
        share = 0.0
        for size, seen in self._reach.items():
            weight = torch.ones(1, *size) if self.region is None else resize_region(self.region, size)
            share = max(share, float((weight * seen).mean()))
        return share

    def __call__(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.strength == 0.0 or not self.acts_somewhere:
            return x
        slot = self.family.layer_at(extra_options, INJECT).index
        region = self.region_weights(x, extra_options)  # first: a call outside sampling has no views and no sigmas
        sigmas = require_option(extra_options, "sigmas", "the gate that turns the subject on at its steps only")
        on = self.active_mask(sigmas, x.shape[0], extra_options.get("sample_sigmas"))
        if on is not None and not bool(on.any()):
            return x
        if slot == 0:  # once per model call
            self.note_reach(extra_options)
        subject_k, subject_v = self.subject_kv(slot, x.device, x.dtype)
        delta = self.adapter_patcher.model.blocks[slot].residual(
            x, subject_k, subject_v, attn_precision=extra_options.get("attn_precision"))
        if on is not None and not bool(on.all()):
            delta = delta * on.to(device=delta.device, dtype=delta.dtype)[:, None, None]
        if region is not None:
            delta = delta * region
        return x + self.strength * delta


def percent_sigma_range(model_sampling, start_percent: float, end_percent: float) -> tuple[float, float]:
    """IPAdapter-style sampling percents -> the sigma window in which the adapter runs."""
    return model_sampling.percent_to_sigma(start_percent), model_sampling.percent_to_sigma(end_percent)


def apply_subject(model, encoder, subject: SubjectFeatures, strength: float,
                  start_percent: float, end_percent: float, mask: torch.Tensor | None = None):
    """A patched clone of `model`; the input MODEL is left untouched. With a `mask` the subject acts only
    where it is 1 (stretched to the image): chain patches with masks to place several subjects."""
    for name, value in (("strength", strength), ("start_percent", start_percent), ("end_percent", end_percent)):
        require_finite(name, value)
    if start_percent > end_percent:
        raise InputValueError(f"start_percent ({start_percent}) is after end_percent ({end_percent}): the subject "
                              "would never be injected. Set start_percent <= end_percent (EZIGen's default is 0.6 "
                              "to 1.0), or strength 0 to switch the subject off.")
    family = require_adapter_fits(model, encoder.info.widths, "model to patch")
    encoder_family = model_family_name(encoder.model)
    if subject.family is not None and subject.family != encoder_family:
        raise InputValueError(f"The subject was encoded by a {subject.family} encoder (adapter "
                              f"'{cut(str(subject.adapter), 120)}') but this encoder is {encoder_family} (adapter "
                              f"'{cut(str(encoder.name), 120)}'): connect the encoder the subject "
                              "was made with, or encode the subject with this one.")
    for k, (feature, width) in enumerate(zip(subject.features, encoder.info.widths)):
        if feature.shape[-1] != width:
            raise ValueError(f"subject feature {k} is {feature.shape[-1]}-wide but the adapter expects {width}: "
                             "encode the subject with the same EZIGen encoder")
    region = subject_region(mask)
    model_sampling = require_model_sampling(model.get_model_object("model_sampling"), "percent_to_sigma",
                                            purpose="the subject's start/end percents as noise levels")
    injection = SubjectInjection(encoder.adapter, family, subject, strength, start_percent, end_percent, model_sampling,
                                 region)
    patched = model.clone()
    patched.set_model_patch(injection, "middle_patch")
    patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KV_WRAPPER_KEY, injection.outer_sample_wrapper)
    add_view_wrappers(patched)  # tells the patch which part of the latent each call sees
    return patched


def gate_subjects(model, window: tuple[float, float]):
    """A clone of `model` whose subject patches all follow `window` (see `SubjectInjection.with_window`);
    other patches and the input model are untouched."""
    gated = model.clone()
    options = gated.model_options["transformer_options"]
    patches = dict(options.get("patches", {}))
    patches["middle_patch"] = [p.with_window(window) if isinstance(p, SubjectInjection) else p
                               for p in patches.get("middle_patch", [])]
    options["patches"] = patches
    return gated


def crop_subject_regions(model, box, source_size: tuple[int, int]):
    """A clone of `model` whose subject masks are cut to `box` (a `crop.Box` of a `source_size` image): a
    subject's mask is stretched to the whole image, and crop-and-stitch edits only the box."""
    if not any(p.region is not None for p in subject_injections(model)):
        return model
    rows, cols = box.slices
    cropped = model.clone()
    options = cropped.model_options["transformer_options"]
    patches = dict(options.get("patches", {}))
    patches["middle_patch"] = [
        p.with_region(resize_region(p.region, source_size)[:, rows, cols].contiguous())
        if isinstance(p, SubjectInjection) and p.region is not None else p
        for p in patches.get("middle_patch", [])]
    options["patches"] = patches
    return cropped


def subject_injections(model) -> list[SubjectInjection]:
    patches = model.model_options.get("transformer_options", {}).get("patches", {}).get("middle_patch", [])
    return [p for p in patches if isinstance(p, SubjectInjection)]


def subject_reports(model) -> list[dict]:
    """What the Sampler and Edit report of each subject patch on `model`, in patch order: its mask's share
    of the image, and `acted_share`, the share it acted on in the runs since `reset_subject_reach`."""
    return [{"strength": p.strength, "images": p.subject.image_count, "resolution": p.subject.resolution,
             "region": "everywhere" if p.region is None else {"masks": len(p.region),
                                                             "share": round(float(p.region.mean()), 4)},
             "acted_share": round(p.acted_share(), 4)}
            for p in subject_injections(model)]


def reset_subject_reach(model) -> None:
    """Forget where the subjects of `model` acted (the Sampler and Edit call it before their runs)."""
    for p in subject_injections(model):
        p.reset_reach()


def reach_warnings(model) -> list[str]:
    """A warning for each subject that acted, but on visibly less of the image than its mask covers
    (a subject the split never switched on is not one: the Sampler says so itself)."""
    warnings = []
    for k, p in enumerate(subject_injections(model), start=1):
        if p.strength == 0 or not p.acted:
            continue
        share, acted = (1.0 if p.region is None else float(p.region.mean())), p.acted_share()
        if share - acted > 0.005:
            covers = "its mask covers" if p.region is not None else "without a mask it would act on"
            warnings.append(f"Subject {k} acted on {acted:.0%} of the image although {covers} {share:.0%}: the model "
                            "evaluated the rest without it (conditioning areas such as ConditioningSetArea or mask "
                            "bounds).")
    return warnings


def require_region_batches(model, batch: int) -> None:
    """Refuse, before sampling, subject masks that cannot be matched to the latent batch."""
    for k, p in enumerate(subject_injections(model), start=1):
        if p.region is not None and len(p.region) not in (1, batch):
            raise InputValueError(f"Subject {k}'s mask holds {len(p.region)} masks but the latent batch is {batch}: "
                                  "give its Patch UNet Attention one mask, or one mask per latent.")

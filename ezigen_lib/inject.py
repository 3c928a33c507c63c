"""Injection: the thin ``middle_patch`` object ComfyUI calls in every transformer block, which adds the
adapter's output right after the block's self-attention (before cross-attention), where the reference
inserts it (docs/method.md sections 4 and 6).

It asks the others: the family which adapter a block takes (family.py), the gate whether the subject is on
at this step (gate.py), the placement where (placement.py), the cache for the subject's keys and values
(subject_kv.py). What the reports read of it is subject_views.py's.
"""
from __future__ import annotations

import copy

import torch
from comfy.patcher_extension import WrappersMP

from .capture import SubjectFeatures
from .errors import cut
from .input_checks import InputValueError, require_finite
from .core_details import require_model_sampling, require_option
from .family import Family, model_family_name, require_adapter_fits
from .latent_views import add_view_wrappers
from .gate import Gate
from .placement import Placement, Reach
from .regions import subject_region
from .subject_kv import SubjectKV

KV_WRAPPER_KEY = "ezigen_subject_kv"
INJECT = "where Patch UNet Attention injects the subject"


class SubjectInjection:
    """The patch object ComfyUI calls in every transformer block.

    Shared, not copied, between model clones (``__deepcopy__``): it is immutable apart from its per-run
    caches (the subject's keys/values, the mask's placements), which the OUTER_SAMPLE wrapper drops after
    each run, and the reach it records for the report.
    """

    def __init__(self, adapter_patcher, family: Family, subject: SubjectFeatures, strength: float, gate: Gate,
                 placement: Placement):
        self.adapter_patcher = adapter_patcher
        self.family = family  # of the patched model: which adapter each block takes
        self.subject = subject
        self.strength = float(strength)
        self.gate = gate
        self.placement = placement
        self.kv = SubjectKV(adapter_patcher, subject)
        self.reach = Reach()

    @property
    def region(self) -> torch.Tensor | None:
        """The subject's mask (masks, H, W), or None: everywhere."""
        return self.placement.mask

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
        self.kv.release()
        self.placement.release()

    def cleanup(self) -> None:
        """Patch-object protocol of newer cores (called after sampling, like ControlNet's): drop the
        per-run subject keys/values so no device tensors outlive the run."""
        self.release_cache()

    # copies that change one thing ---------------------------------------------------------------
    def with_window(self, window: tuple[float, float]) -> SubjectInjection:
        """This subject gated by a fixed sigma window (on while window[1] <= sigma <= window[0]) in place
        of its percents: how the EZIGen Sampler and Edit switch the adapter on at exactly their own
        steps (`ALWAYS_ON`, `NEVER_ON`, the appearance stage). Shares the adapter, caches and reach."""
        gated = copy.copy(self)
        gated.gate = self.gate.with_window(window)
        return gated

    def with_placement(self, placement: Placement) -> SubjectInjection:
        """This subject acting in `placement` instead (a crop of its own mask); shares the adapter and keys/values,
        counts its reach on its own grid (the box's, not the whole image's)."""
        placed = copy.copy(self)
        placed.placement = placement
        placed.reach = Reach()
        return placed

    def __call__(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.strength == 0.0 or not self.placement.acts_somewhere:
            return x
        slot = self.family.layer_at(extra_options, INJECT).index
        region = self.placement.weights(x, extra_options)  # first: a call outside sampling has no views, no sigmas
        sigmas = require_option(extra_options, "sigmas", "the gate that turns the subject on at its steps only")
        on = self.gate.active_mask(sigmas, x.shape[0], extra_options.get("sample_sigmas"))
        if on is not None and not bool(on.any()):
            return x
        if slot == 0:  # once per model call
            self.reach.note(extra_options)
        subject_k, subject_v = self.kv.get(slot, x.device, x.dtype)
        delta = self.adapter_patcher.model.blocks[slot].residual(
            x, subject_k, subject_v, attn_precision=extra_options.get("attn_precision"))
        if on is not None and not bool(on.all()):
            delta = delta * on.to(device=delta.device, dtype=delta.dtype)[:, None, None]
        if region is not None:
            delta = delta * region
        return x + self.strength * delta


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
    family = require_adapter_fits(model, encoder.info.widths, "model to patch", encoder.info.family)
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
    injection = SubjectInjection(encoder.adapter, family, subject, strength,
                                 Gate.from_percents(model_sampling, start_percent, end_percent), Placement(region))
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
    if not any(p.placement.mask is not None for p in subject_injections(model)):
        return model
    rows, cols = box.slices
    cropped = model.clone()
    options = cropped.model_options["transformer_options"]
    patches = dict(options.get("patches", {}))
    patches["middle_patch"] = [
        p.with_placement(p.placement.cropped(rows, cols, source_size))
        if isinstance(p, SubjectInjection) and p.placement.mask is not None else p
        for p in patches.get("middle_patch", [])]
    options["patches"] = patches
    return cropped


def subject_injections(model) -> list[SubjectInjection]:
    """The subject patches on `model`, in patch order."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {}).get("middle_patch", [])
    return [p for p in patches if isinstance(p, SubjectInjection)]


def reset_subject_reach(model) -> None:
    """Forget where the subjects of `model` acted (the Sampler and Edit call it before their runs)."""
    for p in subject_injections(model):
        p.reach.reset()

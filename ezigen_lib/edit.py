"""EZIGen editing: invert a source image, then regenerate only the masked region with the subject.

Each round (`edit_rounds.py`): invert the current image up to the loop's start (unpatched model, exceptional
prompt, no CFG; `inversion.py`); denoise the last n_l steps with the subject injected at every step; after every
step put the background back from the first round's inversion trajectory. Rounds repeat under the same autostop
rule as generation. Work happens at the reference resolution (short side 512; SDXL, native 1024,
is edited at the same `short_side` and a warning logged when that is half its native size or less), on a box
around the mask (crop-and-stitch, `crop.py`) or on the whole image; the result is scaled back and
pasted into the source inside the mask (docs/method.md sections 11 to 13).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from .crop import (CROP_MODES, DEFAULT_CONTEXT, PAINTED_THRESHOLD, REFERENCE_SHORT_SIDE, back_to_source,
                   faint_mask_warnings, require_context, work_area, work_inputs)
from .edit_rounds import begin_rounds
from .edit_source import EditInputError, EditSource
from .family import family_of
from .inject import crop_subject_regions, reset_subject_reach
from .input_checks import require_choice, require_finite
from .inversion import SOLVERS
from .inversion_text import InversionText
from .rounds import LoopSettings, Progress, RoundsResult, plan_loops, reports_core_fallbacks, rounds_report, run_rounds
from .sampler_names import EDIT, require_sampler
from .subject_views import edit_subject_reports, reach_warnings, require_region_batches, subject_views

log = logging.getLogger("EZIGen")

OUTPUT_SIZES = ("source", "reference")


@dataclass(frozen=True)
class EditSettings(LoopSettings):
    cfg: float = 2.0  # the reference's editing guidance
    solver: str = "dpmpp_2m"
    mask_mode: str = "soft"  # or "hard": only fully painted pixels count
    short_side: int = 512
    output_size: str = "source"
    crop: str = "whole image"  # or "around mask" (the node's default): edit a box around the mask (`crop.py`)
    crop_context: float = DEFAULT_CONTEXT
    # reference: faithful plus the reference's own pre- and post-processing (`crop.reference_inputs`)
    MODES: ClassVar[tuple[str, ...]] = ("faithful", "clean", "reference")
    MASK_MODES: ClassVar[tuple[str, ...]] = ("soft", "hard")

    def __post_init__(self):
        require_finite("cfg", self.cfg)
        require_choice("inversion", self.solver, SOLVERS)
        require_choice("mask_mode", self.mask_mode, self.MASK_MODES)
        require_choice("crop", self.crop, CROP_MODES)
        require_context(self.crop_context)
        if not 0.0 < self.split_ratio <= 1.0:
            raise EditInputError(f"split_ratio must be in (0, 1] for editing, got {self.split_ratio}")
        if self.output_size not in OUTPUT_SIZES:
            raise EditInputError(f"output_size must be one of {OUTPUT_SIZES}")
        require_sampler(self.sampler_name, EDIT)  # before any sampling: a name Edit cannot step is refused
        super().__post_init__()

    @property
    def reference_output(self) -> bool:
        """The reference's exact pre- and post-processing: its sizes, its mask threshold, no compositing."""
        return self.mode == "reference"

    @property
    def hard_mask(self) -> bool:
        """Only fully painted pixels count (the reference mode applies the reference's own threshold)."""
        return self.mask_mode == "hard" and not self.reference_output

    @property
    def work_short_side(self) -> int:
        """The work area's short side: the reference mode keeps the reference's 512."""
        return REFERENCE_SHORT_SIDE if self.reference_output else self.short_side

    @property
    def crops(self) -> bool:
        """Whether a box around the mask is edited (crop 'around mask'); the reference edits the whole source."""
        return self.crop == "around mask" and not self.reference_output


def require_pooled_text(model, conditioning, name: str) -> None:
    """A UNet with added conditioning (SDXL) fails deep inside sampling on a CONDITIONING without the pooled
    text embedding (a context made by another node): refuse it first, naming the input."""
    if not getattr(model.model, "adm_channels", 0):
        return
    if any("pooled_output" not in extras for _, extras in conditioning or []):
        raise EditInputError(
            f"The {name} conditioning has no pooled text embedding, which the MODEL ({family_of(model).name}) "
            f"needs with every prompt: encode the {name} prompt with CLIPTextEncode (or CLIPTextEncodeSDXL) of the "
            "MODEL's own checkpoint's CLIP.")


def warn_small_work_size(model, settings: EditSettings) -> None:
    """Log when the work size is half the family's native resolution or less (SDXL at the default 512): the
    edit runs, but the model renders poorly that small."""
    native = family_of(model).native_resolution
    if not settings.reference_output and settings.short_side * 2 <= native:
        log.warning("EZIGen Edit: short_side %d is half or less of the %s MODEL's native %d px, at which it renders "
                    "poorly: set short_side to %d for this checkpoint.", settings.short_side, family_of(model).name,
                    native, native)


@reports_core_fallbacks
def run_edit(model, inversion_context: torch.Tensor | InversionText, vae, source: EditSource, positive, negative,
             settings: EditSettings, clip_vision=None) -> RoundsResult:
    """Invert the source, then `run_rounds` of masked regeneration; the result is pasted into the source.
    `source` is the checked image and mask (`edit_source`); `inversion_context` is the text for the inversion:
    `inversion_text.exceptional_text(clip)` as the reference (a bare context tensor serves a UNet without added
    conditioning)."""
    started = time.perf_counter()
    for name, conditioning in (("positive", positive), ("negative", negative)):
        require_pooled_text(model, conditioning, name)
    if settings.hard_mask:  # the reference keeps only fully painted pixels
        source = EditSource(source.image, (source.mask >= 0.999).float())
    require_region_batches(model, 1)
    reset_subject_reach(model)
    subjects, warnings = edit_subject_reports(model, source.mask)
    if not bool((source.mask >= PAINTED_THRESHOLD).any()):  # nothing an 8-bit mask would store as painted
        largest = float(source.mask.max())
        reason = "empty mask: the source is returned unchanged" if largest == 0.0 else (
            f"empty mask (its largest value, {largest:.2g}, is below 0.5/255, which an 8-bit mask stores as 0): "
            "the source is returned unchanged")
        report = rounds_report(None, reason, 0, {"inversion_evaluations": 0}, settings.mode, started, warnings,
                               subjects=subjects)
        return RoundsResult(latent=None, image=source.image, round_images=source.image, report=report)
    warn_small_work_size(model, settings)

    area = work_area(source.size, source.mask, settings.work_short_side, settings.crop_context, settings.crops)
    warnings = warnings + faint_mask_warnings(source.mask, area)
    work = work_inputs(source, area, settings.reference_output)
    if area.cropped:
        model = crop_subject_regions(model, area.box, area.source_size)
    plan = plan_loops(model.get_model_object("model_sampling"), settings)
    progress = Progress(model, max(1, settings.policy.most_loops) * plan.loop_steps)
    edit = begin_rounds(model, vae, inversion_context, work, plan, settings, clip_vision, progress.callback)
    reason = run_rounds(edit.log, settings.policy, lambda k: edit.sample(k, positive, negative), vae, progress,
                        plan.loop_steps, "editing round {}", first_round_always=True)
    progress.finish()
    for report, view in zip(subjects, subject_views(model)):  # the patches that ran (cut to the box)
        report["acted_share"] = round(view.acted_share * area.share, 4)
    warnings = warnings + reach_warnings(model)
    image = back_to_source(edit.log.last_image[..., :3], source, work, area, settings.output_size)
    details = edit.details(area.report(), list(image.shape[1:3]))
    report = rounds_report(edit.log, reason, edit.counter.calls, details, settings.mode, started, warnings,
                           subjects=subjects)
    return RoundsResult(latent=edit.log.last_latent, image=image, round_images=edit.log.all_images(), report=report)

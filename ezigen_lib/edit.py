"""EZIGen editing: invert a source image, then regenerate only the masked region with the subject.

Each round: invert the current image up to the loop's start (unpatched model, exceptional prompt,
no CFG); denoise the last n_l steps with the subject injected at every step; after every step put
the background back from the first round's inversion trajectory. Rounds repeat under the same
autostop rule as generation. Work happens at the reference resolution (short side 512; SDXL, native 1024,
is edited at the same `short_side` and a warning logged when that is half its native size or less), on a box
around the mask (crop-and-stitch, `crop.py`) or on the whole image; the result is scaled back and
pasted into the source inside the mask (docs/method.md sections 11 to 13).
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import comfy.sample
import comfy.samplers

from .input_checks import require_choice, require_finite, require_finite_pixels
from .crop import (CROP_MODES, DEFAULT_CONTEXT, PAINTED_THRESHOLD, EditInputError, WorkArea, reference_size,
                   require_context, resize_image, work_area)
from .gate import ALWAYS_ON, NEVER_ON
from .inject import crop_subject_regions, reset_subject_reach
from .regions import share_outside
from .family import family_of
from .inversion import SOLVERS, InversionText, invert, inversion_conditioning
from .rounds import (LoopPlan, LoopSettings, Progress, RoundLog, RoundsResult, plan_loops, reports_core_fallbacks,
                     rounds_report, run_rounds)
from .sampler_names import EDIT, require_sampler
from .stage_sampling import CallCounter, require_finite_latent, start_latent, with_window
from .step_counts import (derive_seed, reference_edit_unet_calls, reference_inversion_calls,
                       reference_inversion_timesteps, vp_scale)
from .subject_views import reach_warnings, require_region_batches, subject_reports, subject_views
from .vae_sample import encode_sample

log = logging.getLogger("EZIGen")

OUTPUT_SIZES = ("source", "reference")
REFERENCE_SHORT_SIDE = 512
NODE = "EZIGen Edit"


@dataclass(frozen=True)
class EditSettings(LoopSettings):
    cfg: float = 2.0  # the reference's editing guidance
    solver: str = "dpmpp_2m"
    hard_mask: bool = False
    short_side: int = 512
    output_size: str = "source"
    reference_output: bool = False  # the reference's exact pre/post-processing (see `reference_processing`)
    crop: str = "whole image"  # or "around mask" (the node's default): edit a box around the mask (`crop.py`)
    crop_context: float = DEFAULT_CONTEXT

    def __post_init__(self):
        require_finite("cfg", self.cfg)
        require_choice("inversion", self.solver, SOLVERS)
        require_choice("crop", self.crop, CROP_MODES)
        require_context(self.crop_context)
        if not 0.0 < self.split_ratio <= 1.0:
            raise EditInputError(f"split_ratio must be in (0, 1] for editing, got {self.split_ratio}")
        if self.output_size not in OUTPUT_SIZES:
            raise EditInputError(f"output_size must be one of {OUTPUT_SIZES}")
        require_sampler(self.sampler_name, EDIT)  # before any sampling: a name Edit cannot step is refused
        super().__post_init__()

    @property
    def mode(self) -> str:
        return "reference" if self.reference_output else "faithful" if self.faithful else "clean"


def check_edit_inputs(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source (1,H,W,3|4) and mask (H,W) or (1,H,W) of the same size -> (1,H,W,3), (1,H,W); NaN or infinity in
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
        raise EditInputError(f"mask size {tuple(mask.shape[1:])} differs from the source size {tuple(image.shape[1:3])} "
                             "(H, W): paint the mask on the source or resize it to the source")
    return image[..., :3].float(), mask.float().clamp(0, 1)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def edit_area(source_size: tuple[int, int], mask: torch.Tensor, settings: EditSettings) -> WorkArea:
    """The work area these settings give: a box around the mask (crop 'around mask'), else the whole source; the
    reference mode keeps the reference's whole-image processing at its short side 512."""
    if settings.reference_output:
        return work_area(source_size, mask, REFERENCE_SHORT_SIDE, settings.crop_context, crop=False)
    return work_area(source_size, mask, settings.short_side, settings.crop_context,
                     crop=settings.crop == "around mask")


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


@dataclass(frozen=True)
class WorkInputs:
    """The source at the work size, the mask on the latent grid, and the size of the result."""
    image: torch.Tensor
    latent_mask: torch.Tensor
    result_size: tuple[int, int]


def pack_processing(source: torch.Tensor, mask: torch.Tensor, area: WorkArea) -> WorkInputs:
    """Ours: the work area's box of the source resized to its work size, the mask as given (soft or hard)
    bilinearly."""
    source, mask, size = area.cut(source), area.cut(mask), area.work_size
    work_mask = _resize_mask(mask, size)
    latent_mask = F.interpolate(work_mask[:, None], size=(size[0] // 8, size[1] // 8), mode="bilinear",
                                align_corners=False)
    return WorkInputs(resize_image(source, size), latent_mask, size)


def reference_processing(source: torch.Tensor, mask: torch.Tensor) -> WorkInputs:
    """The reference's own chain, step for step (PIL as it uses it): the 8-bit source and mask resized
    with PIL's bicubic filter to short side 512; only mask pixels still 255 count; that 0/1 uint8 mask
    squashed to 512x512 by cv2's bilinear resize, which rounds back to 0/1, and interpolated to the
    latent grid. Its VAE floors a size that is not a multiple of 8, keeping the top-left latents, so
    the extra right and bottom pixels are dropped here. The result is the decoded work image resized
    back to that short-512 size, with no compositing."""
    height, width = reference_size(*source.shape[1:3], REFERENCE_SHORT_SIDE)
    work_image = _pil_resize(source[0], (height, width))[None]
    work_mask = (_pil_resize(mask[0, :, :, None].expand(-1, -1, 3), (height, width))[..., 0] == 1.0).float()[None]
    square = _binary_linear_resize(work_mask, (REFERENCE_SHORT_SIDE,) * 2)
    latent_mask = F.interpolate(square[:, None], size=(height // 8, width // 8), mode="bilinear", align_corners=False)
    return WorkInputs(work_image[:, :height // 8 * 8, :width // 8 * 8], latent_mask, (height, width))


def _binary_linear_resize(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) of a 0/1 uint8 mask: the result is 0/1 again. Where one side keeps its
    size, as in the reference's squash of a short-512 mask, cv2's fixed-point arithmetic comes to the
    bilinear value rounded with halves up (checked against cv2 in test_faithful.py)."""
    return (F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] >= 0.5).float()


def _pil_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> 8-bit -> PIL bicubic resize to (height, width) -> (h, w, 3) in [0, 1]."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    resized = Image.fromarray(pixels, "RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized).copy()).float() / 255


def _blend_sampler(step_sampler, background: list[torch.Tensor], latent_mask: torch.Tensor, seed: int,
                   edit_round: int):
    """A sampler that runs `step_sampler` one interval at a time and, after every step, puts the
    background back: x = m * x + (1 - m) * background[i] scaled to the new noise level."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = dict(extra_args or {})
        m = latent_mask.to(x.device, x.dtype)
        for i in range(len(sigmas) - 1):
            extra_args["seed"] = derive_seed(seed, "edit", edit_round, i)  # every (round, step) its own draw
            step_callback = None if callback is None else functools.partial(_shift_step, callback, i)
            x = step_sampler.sampler_function(model, x, sigmas[i:i + 2], extra_args=extra_args, callback=step_callback,
                                              disable=True, **step_sampler.extra_options)
            x = m * x + (1 - m) * background[i].to(x.device, x.dtype) * vp_scale(sigmas[i + 1])
        return x

    return comfy.samplers.KSAMPLER(sample)


def _shift_step(callback, i, d):
    callback({**d, "i": i})


def _vp(trajectory: list[torch.Tensor], sigmas: torch.Tensor) -> list[torch.Tensor]:
    """Trajectory latents without their sigma scaling (the reference's variance-preserving form)."""
    return [x / vp_scale(s) for x, s in zip(trajectory, sigmas)]


def inversion_sigmas(model_sampling, loop_sigmas: torch.Tensor, steps: int, split: float, faithful: bool
                     ) -> torch.Tensor:
    """Rising noise levels to invert along, from the clean latent to the editing start.

    Faithful: the reference's inverse-scheduler grid. Clean: exactly the levels the editing steps
    visit, from sigma_min (skipped where the schedule already ends there, so no step has length 0).
    """
    if faithful:
        timesteps = torch.tensor(reference_inversion_timesteps(steps, split), dtype=torch.float32)
        return model_sampling.sigma(timesteps).float().cpu()
    levels = loop_sigmas[:-1].flip(0).float()
    sigma_min = float(model_sampling.sigma_min)
    if float(levels[0]) > sigma_min * (1 + 1e-5):
        levels = torch.cat([torch.tensor([sigma_min]), levels])
    return levels


def backgrounds(vp: list[torch.Tensor], loop_steps: int, faithful: bool) -> list[torch.Tensor]:
    """Background to restore after editing step i. The reference lags one inversion level behind
    (after step i it uses z_{K-i}, ending at z_1); the clean mode uses the level just reached,
    ending on the clean latent."""
    if faithful:
        return [vp[len(vp) - 1 - i] for i in range(loop_steps)]
    return [vp[len(vp) - 2 - i] for i in range(loop_steps - 1)] + [vp[0]]


NO_SUBJECT = "The MODEL carries no EZIGen patch (connect Patch UNet Attention): editing without a subject."


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
def run_edit(model, inversion_context: torch.Tensor | InversionText, vae, image: torch.Tensor, mask: torch.Tensor, positive,
             negative, settings: EditSettings, clip_vision=None) -> RoundsResult:
    """Invert the source, then `run_rounds` of masked regeneration; the result is pasted into the source.
    `inversion_context` is the text for the inversion: `inversion.exceptional_text(clip)` as the reference (a
    bare context tensor serves a UNet without added conditioning)."""
    started = time.perf_counter()
    source, mask = check_edit_inputs(image, mask)
    for name, conditioning in (("positive", positive), ("negative", negative)):
        require_pooled_text(model, conditioning, name)
    if settings.hard_mask and not settings.reference_output:
        mask = (mask >= 0.999).float()  # the reference keeps only fully painted pixels
    require_region_batches(model, 1)
    reset_subject_reach(model)
    subjects, warnings = edit_subjects(model, mask)
    if not bool((mask >= PAINTED_THRESHOLD).any()):  # nothing an 8-bit mask would store as painted
        largest = float(mask.max())
        reason = "empty mask: the source is returned unchanged" if largest == 0.0 else (
            f"empty mask (its largest value, {largest:.2g}, is below 0.5/255, which an 8-bit mask stores as 0): "
            "the source is returned unchanged")
        report = rounds_report(None, reason, 0, {"inversion_evaluations": 0}, settings.mode, started, warnings,
                               subjects=subjects)
        return RoundsResult(latent=None, image=source, round_images=source, report=report)

    area = edit_area(tuple(source.shape[1:3]), mask, settings)
    work = reference_processing(source, mask) if settings.reference_output else pack_processing(source, mask, area)
    if area.cropped:
        model = crop_subject_regions(model, area.box, area.source_size)
        warnings = warnings + faint_mask_warnings(mask, area)
    warn_small_work_size(model, settings)
    faithful = settings.faithful or settings.reference_output
    plan = plan_loops(model.get_model_object("model_sampling"), settings, faithful)
    inversion = inversion_conditioning(model, inversion_context, tuple(work.image.shape[1:3]))
    inverter = Inverter(model, vae, inversion, plan, settings, faithful)
    edit_counter = CallCounter()
    edit_model = with_window(model, ALWAYS_ON, edit_counter)
    progress = Progress(model, max(1, settings.policy.most_loops) * plan.loop_steps)
    step_sampler = comfy.samplers.ksampler(settings.sampler_name)

    source_latent = inverter.encode(work.image, 0)
    vp, first_start = inverter.start(source_latent, 0)
    background = backgrounds(vp, plan.loop_steps, faithful)
    rounds = RoundLog(clip_vision, work.image, source_latent)  # the first round is compared with the source

    def sample_round(k: int) -> torch.Tensor:
        """Round k regenerates the masked region from the inversion of round k - 1's image."""
        start = first_start if k == 1 else inverter.start(inverter.current(rounds, k - 1), k - 1)[1]
        sampler = _blend_sampler(step_sampler, background, work.latent_mask, settings.seed, k - 1)
        return comfy.sample.sample_custom(edit_model, torch.zeros_like(start), settings.cfg, sampler, plan.loop_sigmas,
                                          positive, negative, start, callback=progress.callback, disable_pbar=True,
                                          seed=derive_seed(settings.seed, "edit", k - 1))

    reason = run_rounds(rounds, settings.policy, sample_round, vae, progress, plan.loop_steps, "editing round {}",
                        first_round_always=True)
    progress.finish()
    for report, view in zip(subjects, subject_views(model)):  # the patches that ran (cut to the box)
        report["acted_share"] = round(view.acted_share * area.share, 4)
    warnings = warnings + reach_warnings(model)
    result_image = finish_image(rounds.last_image[..., :3], source, mask, work, settings, area)
    details = edit_details(plan, inverter, work, result_image, settings, rounds.loops, area)
    report = rounds_report(rounds, reason, edit_counter.calls, details, settings.mode, started, warnings,
                           subjects=subjects)
    return RoundsResult(latent=rounds.last_latent, image=result_image, round_images=rounds.all_images(), report=report)


def edit_subjects(model, mask: torch.Tensor) -> tuple[list[dict], list[str]]:
    """Each subject's report, with the share of its region outside the edit mask (allowed: it acts only
    where the edit regenerates; reported so a misplaced mask is seen), and the warnings."""
    views = subject_views(model)
    warnings = [] if views else [NO_SUBJECT]
    subjects = subject_reports(model)
    for k, (view, report) in enumerate(zip(views, subjects), start=1):
        if view.region is None:
            continue
        outside = share_outside(view.region, mask)
        report["outside_edit_mask"] = round(outside, 4)
        if outside > 0.005:
            warnings.append(f"{outside:.0%} of subject {k}'s mask lies outside the edit mask: the subject acts only "
                            "inside the edit mask.")
    return subjects, warnings


class Inverter:
    """Takes a round's image back to the editing start: encode, invert along `levels` with the
    unpatched model and the inversion prompt (no CFG), hand the end over in the reference's VP form."""

    def __init__(self, model, vae, context: list, plan: LoopPlan, settings: EditSettings, faithful: bool):
        self.model, self.vae, self.context, self.plan = model, vae, context, plan
        self.settings, self.faithful = settings, faithful
        self.model_sampling = model.get_model_object("model_sampling")
        self.levels = inversion_sigmas(self.model_sampling, plan.loop_sigmas, plan.steps, settings.split_ratio,
                                       faithful)
        self.counter = CallCounter()
        self.base_model = with_window(model, NEVER_ON, self.counter)

    def encode(self, pixels: torch.Tensor, edit_round: int) -> torch.Tensor:
        if self.faithful:  # the reference encodes with a sample of the VAE posterior
            return encode_sample(self.vae, pixels, derive_seed(self.settings.seed, "vae", edit_round))
        return self.vae.encode(pixels)

    def current(self, rounds: RoundLog, edit_round: int) -> torch.Tensor:
        """The latent the next round inverts: faithful re-encodes the decoded image, clean keeps the latent."""
        return self.encode(rounds.last_image[..., :3], edit_round) if self.faithful else rounds.last_latent

    def start(self, latent: torch.Tensor, edit_round: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the trajectory in VP form, the inversion's end placed at the editing start level)."""
        trajectory = invert(self.base_model, self.context, latent, self.levels, self.settings.solver)
        require_finite_latent(trajectory[-1], f"the inversion of round {edit_round + 1}")
        vp = _vp(trajectory, self.levels)
        return vp, start_latent(self.model, vp[-1] * vp_scale(self.plan.loop_sigmas[0]))


def edit_details(plan: LoopPlan, inverter: Inverter, work: WorkInputs, result_image: torch.Tensor,
                 settings: EditSettings, loops: int, area: WorkArea) -> dict:
    ms, inversion_steps = inverter.model_sampling, len(inverter.levels) - 1
    return {
        "crop": area.report(),
        "inversion_evaluations": inverter.counter.calls,
        "reference_unet_evaluations": reference_edit_unet_calls(plan.steps, settings.split_ratio, loops),
        "reference_inversion_evaluations": reference_inversion_calls(inversion_steps, loops),
        "processing_size": list(work.image.shape[1:3]), "output_size": list(result_image.shape[1:3]),
        "inversion": f"{settings.solver} over {inversion_steps} steps",
        "inversion_timesteps": [round(float(ms.timestep(s)), 2) for s in inverter.levels],
        **plan.schedule_report(ms, settings.steps),
    }


def finish_image(decoded: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, work: WorkInputs,
                 settings: EditSettings, area: WorkArea) -> torch.Tensor:
    """The reference returns the decoded work image at its short-512 size; ours pastes the edit into the
    source at the source size (pixels outside the mask exactly the source's), into the box when cropped
    (pixels outside the box are the source's own, untouched)."""
    if settings.reference_output:
        return _pil_resize(decoded[0], work.result_size)[None]
    if settings.output_size != "source":
        return decoded
    return area.paste(decoded, source, mask)

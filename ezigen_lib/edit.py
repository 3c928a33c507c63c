"""EZIGen editing: invert a source image, then regenerate only the masked region with the subject.

Each round: invert the current image up to the loop's start (unpatched model, exceptional prompt,
no CFG); denoise the last n_l steps with the subject injected at every step; after every step put
the background back from the first round's inversion trajectory. Rounds repeat under the same
autostop rule as generation. Work happens at the reference resolution (short side 512); the result
is scaled back to the source size and pasted into the source outside the mask.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.sample
import comfy.samplers

from .autostop import LoopPolicy
from .checks import require_choice, require_finite
from .inject import subject_injections
from .inversion import SOLVERS, invert, reference_inversion_timesteps
from .sampling import ALWAYS_ON, NEVER_ON, CallCounter, Progress, RoundLog, with_window
from .schedule import loop_start_index

OUTPUT_SIZES = ("source", "reference")


class EditInputError(ValueError):
    pass


@dataclass(frozen=True)
class EditSettings:
    seed: int
    steps: int = 50
    cfg: float = 2.0  # the reference's editing guidance
    sampler_name: str = "ddpm"
    scheduler: str = "ddim_uniform"
    split_ratio: float = 0.4
    policy: LoopPolicy = field(default_factory=LoopPolicy)
    faithful: bool = True
    solver: str = "dpmpp_2m"
    hard_mask: bool = False
    short_side: int = 512
    output_size: str = "source"

    def __post_init__(self):
        require_finite("cfg", self.cfg)
        require_choice("inversion", self.solver, SOLVERS)
        if not 0.0 < self.split_ratio <= 1.0:
            raise EditInputError(f"split_ratio must be in (0, 1] for editing, got {self.split_ratio}")
        if self.output_size not in OUTPUT_SIZES:
            raise EditInputError(f"output_size must be one of {OUTPUT_SIZES}")
        if self.sampler_name not in comfy.samplers.KSAMPLER_NAMES:
            raise EditInputError(f"sampler {self.sampler_name!r} cannot be stepped one interval at a time; use "
                                 f"one of {comfy.samplers.KSAMPLER_NAMES}")


@dataclass
class EditResult:
    image: torch.Tensor  # (1, H, W, 3) at the source size (or the processing size)
    latent: torch.Tensor | None
    round_images: torch.Tensor
    report: dict

    def report_text(self) -> str:
        return json.dumps(self.report, indent=2)


def check_edit_inputs(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source (1,H,W,3|4) and mask (H,W) or (1,H,W) of the same size -> (1,H,W,3), (1,H,W)."""
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
        raise EditInputError(f"mask size {tuple(mask.shape[1:])} differs from the source size {tuple(image.shape[1:3])} "
                             "(H, W): paint the mask on the source or resize it to the source")
    return image[..., :3].float(), mask.float().clamp(0, 1)


# The largest work size: the square the largest short_side (2048) gives. Scaling the short side alone has no
# bound on the long one (a 1 x 4096 source would be edited at 512 x 2,097,152 and exhaust the memory).
MAX_WORK_PIXELS = 2048 * 2048


def processing_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The reference's short-side-512 size, floored to the VAE's multiple of 8; refused beyond MAX_WORK_PIXELS."""
    scale = short_side / min(height, width)
    h, w = (short_side, int(width * scale)) if height <= width else (int(height * scale), short_side)
    size = max(8, h // 8 * 8), max(8, w // 8 * 8)
    if size[0] * size[1] > MAX_WORK_PIXELS:
        raise EditInputError(
            f"the source ({height} x {width}) at short_side {short_side} would be edited at {size[0]} x {size[1]} = "
            f"{size[0] * size[1]:,} pixels, more than EZIGen Edit's limit of {MAX_WORK_PIXELS:,} pixels (2048 x 2048): "
            "crop the source around the masked region (ImageCrop, with the mask cropped the same way) or lower "
            "short_side")
    return size


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[1:3]) == size:
        return image
    out = F.interpolate(image.movedim(-1, 1), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1).movedim(1, -1)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _blend_sampler(step_sampler, background: list[torch.Tensor], latent_mask: torch.Tensor, seed: int):
    """A sampler that runs `step_sampler` one interval at a time and, after every step, puts the
    background back: x = m * x + (1 - m) * background[i] scaled to the new noise level."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = dict(extra_args or {})
        m = latent_mask.to(x.device, x.dtype)
        for i in range(len(sigmas) - 1):
            extra_args["seed"] = seed + i  # a fresh ancestral noise draw per step
            step_callback = None if callback is None else functools.partial(_shift_step, callback, i)
            x = step_sampler.sampler_function(model, x, sigmas[i:i + 2], extra_args=extra_args, callback=step_callback,
                                              disable=True, **step_sampler.extra_options)
            scale = torch.sqrt(1.0 + sigmas[i + 1] ** 2)
            x = m * x + (1 - m) * background[i].to(x.device, x.dtype) * scale
        return x

    return comfy.samplers.KSAMPLER(sample)


def _shift_step(callback, i, d):
    callback({**d, "i": i})


def _vp(trajectory: list[torch.Tensor], sigmas: torch.Tensor) -> list[torch.Tensor]:
    """Trajectory latents without their sigma scaling (the reference's variance-preserving form)."""
    return [x / math.sqrt(1.0 + float(s) ** 2) for x, s in zip(trajectory, sigmas)]


def run_edit(model, inversion_context: torch.Tensor, vae, image: torch.Tensor, mask: torch.Tensor, positive,
             negative, settings: EditSettings, clip_vision=None) -> EditResult:
    """`inversion_context` is the text for the inversion: `inversion.exceptional_prompt(clip)` as the reference."""
    started = time.perf_counter()
    source, mask = check_edit_inputs(image, mask)
    if settings.hard_mask:
        mask = (mask >= 0.999).float()  # the reference keeps only fully painted pixels
    warnings = []
    if not subject_injections(model):
        warnings.append("The MODEL carries no EZIGen patch (connect Patch UNet Attention): editing without a subject.")
    if float(mask.max()) == 0.0:
        return EditResult(image=source, latent=None, round_images=source,
                          report={"loops": 0, "stop_reason": "empty mask: the source is returned unchanged",
                                  "unet_evaluations": 0, "inversion_evaluations": 0, "warnings": warnings})

    height, width = source.shape[1:3]
    size = processing_size(height, width, settings.short_side)
    work_image = _resize_image(source, size)
    work_mask = _resize_mask(mask, size)
    latent_mask = F.interpolate(work_mask[:, None], size=(size[0] // 8, size[1] // 8), mode="bilinear",
                                align_corners=False)

    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, settings.scheduler, settings.steps).cpu()
    n = len(sigmas) - 1
    loop_sigmas = sigmas[loop_start_index(n, settings.split_ratio):]
    loop_steps = len(loop_sigmas) - 1
    if settings.faithful:
        inversion_sigmas = model_sampling.sigma(torch.tensor(
            reference_inversion_timesteps(n, settings.split_ratio), dtype=torch.float32)).cpu()
    else:  # invert along exactly the levels the editing steps visit
        inversion_sigmas = loop_sigmas.flip(0).clone()
        inversion_sigmas[0] = model_sampling.sigma_min
    inversion_counter, edit_counter = CallCounter(), CallCounter()
    base_model = with_window(model, NEVER_ON, inversion_counter)
    edit_model = with_window(model, ALWAYS_ON, edit_counter)
    policy = settings.policy
    progress = Progress(model, max(1, policy.most_loops) * loop_steps)
    step_sampler = comfy.samplers.ksampler(settings.sampler_name)

    def inverted(current_latent):
        return invert(base_model, inversion_context, current_latent, inversion_sigmas, settings.solver)

    latent = vae.encode(work_image)
    first = inverted(latent)
    vp = _vp(first, inversion_sigmas)
    # background to restore after editing step i: the reference lags one inversion level behind
    # (after step i it uses z_{K-i}, ending at z_1); the clean mode uses the level just reached.
    background = [vp[len(vp) - 1 - i] if settings.faithful else vp[len(vp) - 2 - i] for i in range(loop_steps)]
    if not settings.faithful:
        background[-1] = vp[0]

    rounds = RoundLog(clip_vision, work_image, latent)  # the first round is compared with the source
    start = first[-1]
    while True:  # at least one round: editing has no first pass of its own
        comfy.model_management.throw_exception_if_processing_interrupted()
        t = time.perf_counter()
        round_seed = settings.seed + rounds.loops
        sampler = _blend_sampler(step_sampler, background, latent_mask, round_seed)
        raw_start = _to_raw(model, start)
        x = comfy.sample.sample_custom(edit_model, torch.zeros_like(raw_start), settings.cfg, sampler, loop_sigmas,
                                       positive, negative, raw_start, callback=progress.callback,
                                       disable_pbar=True, seed=round_seed)
        progress.finish_round(loop_steps)
        image_now = rounds.add(vae, x, t)
        go_on, reason = policy.next_step(rounds.loops, rounds.last_similarity)
        if not go_on:
            break
        start = inverted(vae.encode(image_now[..., :3]) if settings.faithful else x)[-1]
    progress.finish()

    result_image = image_now[..., :3]
    if settings.output_size == "source":
        result_image = _resize_image(result_image, (height, width))
        full_mask = mask[..., None]
        result_image = source * (1 - full_mask) + result_image * full_mask
    report = {
        **rounds.report(),
        "stop_reason": reason,
        "unet_evaluations": edit_counter.calls,
        "inversion_evaluations": inversion_counter.calls,
        "reference_unet_evaluations": n + rounds.loops * loop_steps,
        "reference_inversion_evaluations": rounds.loops * math.ceil(settings.split_ratio * n),
        "processing_size": list(size), "output_size": list(result_image.shape[1:3]),
        "inversion": f"{settings.solver} over {len(inversion_sigmas) - 1} steps",
        "mode": "faithful" if settings.faithful else "clean",
        "seconds": {"loops_s": rounds.seconds, "total_s": round(time.perf_counter() - started, 3)},
        "warnings": warnings,
    }
    return EditResult(image=result_image, latent=x, round_images=rounds.all_images(), report=report)


def _to_raw(model, x_model_space: torch.Tensor) -> torch.Tensor:
    """Sampling takes raw VAE latents and scales them itself: undo that scaling for a model-space start."""
    return model.model.process_latent_out(x_model_space)

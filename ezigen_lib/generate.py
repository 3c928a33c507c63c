"""EZIGen generation: the decoupled pass, then re-noise-and-refine loops until the rounds agree.

Cost is N + L * n_l UNet evaluations (+1 encoder pass): the reference's two diagnostic passes
("simple" and "pure text" images) are not computed, since the decoupled pass already contains the
text-only layout steps (docs/method.md sections 6, 8 and 14).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

import comfy.sample
import comfy.samplers

from .gate import ALWAYS_ON, NEVER_ON
from .inject import reset_subject_reach
from .rounds import (LoopPlan, LoopSettings, Progress, RoundLog, RoundsResult, plan_loops, reports_core_fallbacks,
                     rounds_report, run_rounds)
from .sampler_names import SAMPLER, require_sampler
from .stage_sampling import CallCounter, require_finite_latent, start_latent, with_window
from .step_counts import (appearance_start_index, derive_seed, reference_unet_calls, renoise_coefficients,
                       sampler_seed, vp_scale)
from .subject_views import reach_warnings, require_region_batches, subject_reports, subject_views

log = logging.getLogger("EZIGen")


@dataclass(frozen=True)
class GenerationSettings(LoopSettings):
    """The EZIGen Sampler's settings: the shared loop settings with generation's defaults."""

    def __post_init__(self):
        require_sampler(self.sampler_name, SAMPLER)
        super().__post_init__()


LOOP_NEGATIVE_NEEDED = (
    "mode = faithful runs the loops with the empty prompt as their negative, as the reference does: connect a "
    "CLIPTextEncode with an empty text to the EZIGen Sampler's loop_negative input (or choose mode = clean, which "
    "reuses the negative prompt).")


@reports_core_fallbacks
def run_generation(model, positive, negative, latent: dict, vae, settings: GenerationSettings,
                   loop_negative=None, clip_vision=None) -> RoundsResult:
    """The decoupled pass, then `run_rounds` of re-noise-and-refine loops."""
    started = time.perf_counter()
    samples = checked_latent(model, latent["samples"])
    require_region_batches(model, samples.shape[0])
    reset_subject_reach(model)
    model_sampling = model.get_model_object("model_sampling")
    plan = plan_loops(model_sampling, settings)
    warnings = generation_warnings(model, plan, settings)
    loop_negative = choose_loop_negative(loop_negative, negative, plan, settings)
    sampler = comfy.samplers.sampler_object(settings.sampler_name)
    counter = CallCounter()
    progress = Progress(model, plan.steps + settings.policy.most_loops * plan.loop_steps)
    batch_index = latent.get("batch_index")

    first_started = time.perf_counter()
    x = decoupled_pass(model, samples, batch_index, positive, negative, sampler, plan, settings, counter, progress)
    image = vae.decode(x)
    first_pass_s = round(time.perf_counter() - first_started, 3)
    rounds = RoundLog(clip_vision, image, x)

    loop_model = with_window(model, ALWAYS_ON, counter)
    a, b = renoise_coefficients(model_sampling, settings.split_ratio, float(plan.loop_sigmas[0]), settings.faithful)

    def sample_loop(loop: int) -> torch.Tensor:
        """Re-noise the last round to the loop start (a z + b eps) and refine it with the subject."""
        # the reference re-encodes the decoded image, sampling the posterior; clean keeps the latent
        z = rounds.next_start(vae, derive_seed(settings.seed, "vae", loop) if settings.faithful else None)
        eps = comfy.sample.prepare_noise(z, derive_seed(settings.seed, "renoise", loop), batch_index)
        start = start_latent(model, model.model.process_latent_in(z) * a + eps * b)
        return comfy.sample.sample_custom(loop_model, torch.zeros_like(start), settings.cfg, sampler, plan.loop_sigmas,
                                          positive, loop_negative, start, callback=progress.callback,
                                          disable_pbar=True, seed=derive_seed(settings.seed, "sampler", loop))

    reason = "no steps to refine"
    if plan.loop_steps > 0:
        reason = run_rounds(rounds, settings.policy, sample_loop, vae, progress, plan.loop_steps, "loop {}")
    progress.finish()
    details = generation_details(model_sampling, plan, settings, rounds.loops)
    subjects = subject_reports(model)
    report = rounds_report(rounds, reason, counter.calls, details, settings.mode, started,
                           warnings + reach_warnings(model), seconds={"decoupled_s": first_pass_s}, subjects=subjects)
    return RoundsResult(latent=rounds.last_latent, image=rounds.last_image, round_images=rounds.all_images(),
                        report=report)


def decoupled_pass(model, samples, batch_index, positive, negative, sampler, plan: LoopPlan,
                   settings: GenerationSettings, counter: CallCounter, progress: Progress) -> torch.Tensor:
    """Text alone lays out the first steps; the subject joins from the appearance start on."""
    i0 = appearance_start_index(plan.steps, settings.split_ratio)
    window = (float(plan.sigmas[i0]), 0.0) if i0 < plan.steps else NEVER_ON
    noise = comfy.sample.prepare_noise(samples, settings.seed, batch_index)
    if settings.faithful:  # the reference starts from unit-variance noise at its first timestep
        first = model.model.process_latent_in(samples) + noise * vp_scale(plan.sigmas[0])
        samples, noise = start_latent(model, first), torch.zeros_like(noise)
    x = comfy.sample.sample_custom(with_window(model, window, counter), noise, settings.cfg, sampler, plan.sigmas,
                                   positive, negative, samples, callback=progress.callback, disable_pbar=True,
                                   seed=sampler_seed(settings.seed))
    require_finite_latent(x, "the first pass")
    progress.finish_round(plan.steps)
    return x


def checked_latent(model, samples: torch.Tensor) -> torch.Tensor:
    """The LATENT's samples, refused with a message when they are not this model's image latents."""
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    channels = model.get_model_object("latent_format").latent_channels
    if samples.ndim != 4:
        raise ValueError(f"The LATENT has {samples.ndim} dimensions (shape {tuple(samples.shape)}) but the EZIGen "
                         "Sampler works on image latents (batch, channels, height, width): a video or 3-D latent "
                         "cannot be used; make it with EmptyLatentImage or VAEEncode and the SD checkpoint's VAE.")
    if samples.shape[1] != channels:
        raise ValueError(f"The LATENT has shape {tuple(samples.shape)} but this model works on {channels}-channel "
                         "latents: make it with EmptyLatentImage or VAEEncode and the SD checkpoint's VAE (a FLUX or "
                         "SDXL-family latent cannot be used; decode it to an IMAGE first).")
    return samples


def generation_warnings(model, plan: LoopPlan, settings: GenerationSettings) -> list[str]:
    warnings = []
    if not subject_views(model):
        warnings.append("The MODEL carries no EZIGen patch (connect Patch UNet Attention): sampling without a subject.")
        log.warning("EZIGen Sampler: %s", warnings[-1])
    if plan.loop_steps == 0 and settings.policy.most_loops > 0:
        warnings.append(f"split_ratio {settings.split_ratio} leaves no steps to refine: no loops run.")
    return warnings


def choose_loop_negative(loop_negative, negative, plan: LoopPlan, settings: GenerationSettings):
    """The loops' negative: the wired one; else faithful mode refuses (the reference uses the empty
    prompt, which this node cannot make) and clean mode reuses the first pass's."""
    if loop_negative is not None:
        return loop_negative
    if settings.faithful and plan.loop_steps > 0 and settings.policy.most_loops > 0:
        raise ValueError(LOOP_NEGATIVE_NEEDED)
    return negative


def generation_details(model_sampling, plan: LoopPlan, settings: GenerationSettings, loops: int) -> dict:
    s = settings.split_ratio
    return {
        "reference_unet_evaluations": reference_unet_calls(plan.steps, s, loops),
        "steps": settings.steps, "schedule_steps": plan.steps, "split_ratio": s,
        "appearance_start_step": appearance_start_index(plan.steps, s),
        "loop_start_step": plan.loop_start, "loop_steps": plan.loop_steps,
        **plan.schedule_report(model_sampling, settings.steps),
    }

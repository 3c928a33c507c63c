"""EZIGen generation: the decoupled pass, then re-noise-and-refine loops until the rounds agree.

Cost is N + L * n_l UNet evaluations (+1 encoder pass): the reference's two diagnostic passes
("simple" and "pure text" images) are not computed, since the decoupled pass already contains the
text-only layout steps.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers

from .autostop import LoopPolicy
from .checks import require_finite
from .inject import subject_injections
from .sampling import (ALWAYS_ON, NEVER_ON, CallCounter, Progress, RoundLog, require_finite_latent,
                       sampling_schedule, schedule_report, start_latent, with_window)
from .schedule import (appearance_start_index, derive_seed, loop_start_index, reference_unet_calls,
                       renoise_coefficients, sampler_seed, vp_scale)
from .vae_sample import encode_sample

log = logging.getLogger("EZIGen")


@dataclass(frozen=True)
class GenerationSettings:
    seed: int
    steps: int = 50
    cfg: float = 7.5
    sampler_name: str = "ddpm"
    scheduler: str = "ddim_uniform"
    split_ratio: float = 0.4
    policy: LoopPolicy = field(default_factory=LoopPolicy)
    faithful: bool = True

    def __post_init__(self):
        require_finite("cfg", self.cfg)
        if not 0.0 <= self.split_ratio <= 1.0:
            raise ValueError(f"split_ratio must be in [0, 1], got {self.split_ratio}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class GenerationResult:
    latent: torch.Tensor  # raw VAE space, like any LATENT
    image: torch.Tensor
    round_images: torch.Tensor  # every round's image, round-major along the batch
    report: dict

    def report_text(self) -> str:
        return json.dumps(self.report, indent=2)


LOOP_NEGATIVE_NEEDED = (
    "mode = faithful runs the loops with the empty prompt as their negative, as the reference does: connect a "
    "CLIPTextEncode with an empty text to the EZIGen Sampler's loop_negative input (or choose mode = clean, which "
    "reuses the negative prompt).")


def run_generation(model, positive, negative, latent: dict, vae, settings: GenerationSettings,
                   loop_negative=None, clip_vision=None) -> GenerationResult:
    started = time.perf_counter()
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    channels = model.get_model_object("latent_format").latent_channels
    if samples.ndim != 4:
        raise ValueError(f"The LATENT has {samples.ndim} dimensions (shape {tuple(samples.shape)}) but the EZIGen "
                         "Sampler works on image latents (batch, channels, height, width): a video or 3-D latent "
                         "cannot be used; make it with EmptyLatentImage or VAEEncode and the SD checkpoint's VAE.")
    if samples.shape[1] != channels:
        raise ValueError(f"The LATENT has shape {tuple(samples.shape)} but this model works on {channels}-channel "
                         "latents: make it with EmptyLatentImage or VAEEncode and the SD checkpoint's VAE (a FLUX or "
                         "SDXL-family latent cannot be used; decode it to an IMAGE first).")
    warnings = []
    if not subject_injections(model):
        warnings.append("The MODEL carries no EZIGen patch (connect Patch UNet Attention): sampling without a subject.")
        log.warning("EZIGen Sampler: %s", warnings[-1])

    s, policy, faithful = settings.split_ratio, settings.policy, settings.faithful
    model_sampling = model.get_model_object("model_sampling")
    sigmas, schedule_name = sampling_schedule(model_sampling, settings.scheduler, settings.steps, faithful)
    n = len(sigmas) - 1  # ComfyUI's ddim_uniform can give one step more than asked
    i0 = appearance_start_index(n, s)
    k = loop_start_index(n, s)
    loop_sigmas = sigmas[k:]
    loop_steps = n - k
    if loop_steps == 0 and policy.most_loops > 0:
        warnings.append(f"split_ratio {s} leaves no steps to refine: no loops run.")
    if loop_negative is None:
        if faithful and loop_steps > 0 and policy.most_loops > 0:
            raise ValueError(LOOP_NEGATIVE_NEEDED)
        loop_negative = negative
    sampler = comfy.samplers.sampler_object(settings.sampler_name)
    counter = CallCounter()
    decoupled_window = (float(sigmas[i0]), 0.0) if i0 < n else NEVER_ON
    decoupled_model = with_window(model, decoupled_window, counter)
    loop_model = with_window(model, ALWAYS_ON, counter)
    progress = Progress(model, n + policy.most_loops * loop_steps)
    timings = {}

    batch_inds = latent.get("batch_index")
    noise = comfy.sample.prepare_noise(samples, settings.seed, batch_inds)
    t = time.perf_counter()
    if faithful:  # the reference starts from unit-variance noise at its first timestep
        first = model.model.process_latent_in(samples) + noise * vp_scale(sigmas[0])
        samples, noise = start_latent(model, first), torch.zeros_like(noise)
    x = comfy.sample.sample_custom(decoupled_model, noise, settings.cfg, sampler, sigmas, positive, negative,
                                   samples, callback=progress.callback, disable_pbar=True,
                                   seed=sampler_seed(settings.seed))
    require_finite_latent(x, "the first pass")
    progress.finish_round(n)
    image = vae.decode(x)
    timings["decoupled_s"] = round(time.perf_counter() - t, 3)
    rounds = RoundLog(clip_vision, image, x)
    reason = "no loops requested" if loop_steps else "no steps to refine"
    a, b = renoise_coefficients(model_sampling, s, float(loop_sigmas[0]), faithful)
    while loop_steps > 0:
        go_on, reason = policy.next_step(rounds.loops, rounds.last_similarity)
        if not go_on:
            break
        comfy.model_management.throw_exception_if_processing_interrupted()
        t = time.perf_counter()
        loop = rounds.loops + 1
        z = encode_sample(vae, image[..., :3], derive_seed(settings.seed, "vae", loop)) if faithful else x
        eps = comfy.sample.prepare_noise(z, derive_seed(settings.seed, "renoise", loop), batch_inds)
        start = start_latent(model, model.model.process_latent_in(z) * a + eps * b)
        x = comfy.sample.sample_custom(loop_model, torch.zeros_like(start), settings.cfg, sampler, loop_sigmas,
                                       positive, loop_negative, start, callback=progress.callback,
                                       disable_pbar=True, seed=derive_seed(settings.seed, "sampler", loop))
        require_finite_latent(x, f"loop {loop}")
        progress.finish_round(loop_steps)
        image = rounds.add(vae, x, t)
    progress.finish()

    report = {
        **rounds.report(),
        "stop_reason": reason,
        "unet_evaluations": counter.calls,
        "reference_unet_evaluations": reference_unet_calls(n, s, rounds.loops),
        "steps": settings.steps, "schedule_steps": n, "split_ratio": s, "appearance_start_step": i0,
        "loop_start_step": k, "loop_steps": loop_steps,
        **schedule_report(model_sampling, sigmas, schedule_name, settings.steps),
        "mode": "faithful" if faithful else "clean",
        "seconds": {**timings, "loops_s": rounds.seconds, "total_s": round(time.perf_counter() - started, 3)},
        "warnings": warnings,
    }
    return GenerationResult(latent=x, image=image, round_images=rounds.all_images(), report=report)

"""Sampling pieces shared by generation and editing: the schedule, where a stage starts, gating a
model clone and counting its UNet calls (docs/method.md sections 7 and 14)."""
from __future__ import annotations

import torch

import comfy.samplers
from comfy.patcher_extension import WrappersMP

from .input_checks import InputValueError
from .inject import gate_subjects
from .step_counts import reference_sigmas, reference_timesteps

COUNTER_KEY = "ezigen_unet_call_counter"


class CallCounter:
    """PREDICT_NOISE wrapper: one call = one (CFG-batched) UNet evaluation of the sampler."""

    def __init__(self):
        self.calls = 0

    def __call__(self, executor, *args, **kwargs):
        self.calls += 1
        return executor(*args, **kwargs)


def with_window(model, window: tuple[float, float], counter: CallCounter):
    """A clone whose subjects follow `window` (inject.ALWAYS_ON, NEVER_ON, or a stage) and whose UNet
    calls `counter` counts."""
    m = gate_subjects(model, window)
    m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, COUNTER_KEY, counter)
    return m


def sampling_schedule(model_sampling, scheduler: str, steps: int, faithful: bool) -> tuple[torch.Tensor, str]:
    """(sigmas, name): in faithful mode ddim_uniform is the reference's leading timesteps for every N
    (ComfyUI's own ddim_uniform has N + 1 steps when 1000 % N is large)."""
    if faithful and scheduler == "ddim_uniform":
        return reference_sigmas(model_sampling, steps), "reference (DDPM leading spacing)"
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()
    if not bool(torch.isfinite(sigmas).all()):  # e.g. ComfyUI's kl_optimal divides by steps - 1
        raise InputValueError(f"the {scheduler} scheduler gives no usable schedule for {steps} step(s) (ComfyUI computes "
                              "non-finite noise levels for it): use more steps or another scheduler")
    return sigmas, scheduler


def schedule_report(model_sampling, sigmas: torch.Tensor, name: str, steps: int) -> dict:
    """The timesteps sampled beside the reference's, so a user can see where they differ."""
    sampled = [round(float(model_sampling.timestep(s)), 2) for s in sigmas[:-1]]
    return {"schedule": name, "timesteps": sampled, "reference_timesteps": reference_timesteps(steps)}


def start_latent(model, x_model_space: torch.Tensor) -> torch.Tensor:
    """The raw latent that sampling with zero noise starts from exactly at `x_model_space`.

    Passing the start as the latent (not as noise that ComfyUI scales by sigma_0, or by
    sqrt(1 + sigma_0^2) at sigma_max) lets each stage start where the reference does.
    """
    return model.model.process_latent_out(x_model_space)


def require_finite_latent(x: torch.Tensor, stage: str) -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{stage} produced non-finite values (NaN or inf): the model's precision or "
                                 "these settings do not work here (run the model in fp32, e.g. ComfyUI's "
                                 "--force-fp32, or change the settings).")
    return x

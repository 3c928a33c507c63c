"""Partial inversion of a source latent with the unpatched base model, keeping the whole trajectory, and the way
an edit round uses it to reach the editing start (`Inverter`).

The reference inverts with DPM-Solver++(2M) run backwards (noise level rising), no CFG, and an
"exceptional" text (`inversion_text.py`). Its timesteps are the inverse scheduler's linspace grid, 0, 20, 40, ...,
400 for 50 steps (step_counts.reference_inversion_timesteps): ceil(s * N) steps, ending at about t = 1000 s.
Euler (= deterministic DDIM) inversion is the simpler option.
"""
from __future__ import annotations

import functools

import torch

import comfy.model_management
import comfy.samplers

from .gate import NEVER_ON
from .rounds import LoopPlan
from .stage_sampling import CallCounter, require_finite_latent, start_latent, with_window
from .step_counts import reference_inversion_timesteps, vp_scale

SOLVERS = ("dpmpp_2m", "euler")


def _dpmpp_2m_inverse(model, x, sigmas, extra_args=None, callback=None, disable=None, trajectory=None):
    """DPM-Solver++(2M) (data prediction, midpoint form) stepping to rising sigmas; first step first order."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    trajectory.append(x)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        h = sigmas[i].log() - sigmas[i + 1].log()  # step in lambda = -log(sigma); negative when inverting
        estimate = denoised
        if old_denoised is not None:
            r = h_last / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * estimate
        old_denoised, h_last = denoised, h
        trajectory.append(x)
    return x


def _euler_inverse(model, x, sigmas, extra_args=None, callback=None, disable=None, trajectory=None):
    """Euler in sigma space on an epsilon model: deterministic DDIM, run to rising sigmas."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    trajectory.append(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
        trajectory.append(x)
    return x


_SOLVER_FUNCTIONS = {"dpmpp_2m": _dpmpp_2m_inverse, "euler": _euler_inverse}


def invert(model, context: torch.Tensor | list, latent: torch.Tensor, sigmas: torch.Tensor, solver: str = "dpmpp_2m"
           ) -> list[torch.Tensor]:
    """Trajectory [x at sigmas[0], ..., x at sigmas[-1]] (ComfyUI's sigma-scaled latent space) of the
    raw VAE `latent`, placed at sigmas[0] as the reference treats the clean latent, with no CFG.

    `context`: the text context, or a whole CONDITIONING (`inversion_conditioning`). `model` must not
    inject a subject (the caller passes a gated-off clone).
    """
    if solver not in _SOLVER_FUNCTIONS:
        raise ValueError(f"inversion solver must be one of {SOLVERS}, got {solver!r}")
    trajectory: list[torch.Tensor] = []
    sampler = comfy.samplers.KSAMPLER(functools.partial(_SOLVER_FUNCTIONS[solver], trajectory=trajectory))
    guider = comfy.samplers.CFGGuider(model)
    conditioning = context if isinstance(context, list) else [[context, {}]]
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    start = latent * vp_scale(sigmas[0])  # x_vp = z at the first level, as x_ve
    if len(sigmas) == 1:  # editing starts at the lowest level itself: nothing to invert
        return [model.model.process_latent_in(start).to(comfy.model_management.intermediate_device())]
    guider.sample(torch.zeros_like(start), start, sampler, sigmas, disable_pbar=True, seed=0)
    return [x.to(comfy.model_management.intermediate_device()) for x in trajectory]


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


class Inverter:
    """Takes a round's latent back to the editing start: invert along `levels` with the unpatched model and the
    inversion prompt (no CFG), the trajectory in the reference's VP form (`trajectory`), its end placed at the
    editing start level (`start`)."""

    def __init__(self, model, conditioning: list, plan: LoopPlan, split_ratio: float, solver: str, faithful: bool):
        self.model, self.conditioning, self.plan, self.solver = model, conditioning, plan, solver
        self.model_sampling = model.get_model_object("model_sampling")
        self.levels = inversion_sigmas(self.model_sampling, plan.loop_sigmas, plan.steps, split_ratio, faithful)
        self.counter = CallCounter()
        self.base_model = with_window(model, NEVER_ON, self.counter)

    def trajectory(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """The inversion of `latent` along the levels, without their sigma scaling (the reference's VP form)."""
        trajectory = invert(self.base_model, self.conditioning, latent, self.levels, self.solver)
        return [x / vp_scale(s) for x, s in zip(trajectory, self.levels)]

    def start(self, vp: list[torch.Tensor], edit_round: int) -> torch.Tensor:
        """The inversion's end placed at the editing start level."""
        require_finite_latent(vp[-1], f"the inversion of round {edit_round + 1}")
        return start_latent(self.model, vp[-1] * vp_scale(self.plan.loop_sigmas[0]))

"""Step arithmetic of the layout/appearance split and the loops, exactly as the reference counts.

N = steps, s = split_ratio (the share of the schedule that transfers appearance).
- Decoupled stage: the adapter is on at step i iff (1 - s) * N < i + 1, i.e. from
  i0 = floor((1 - s) * N) on, evaluated in float arithmetic (s = 0.8, N = 50 gives i0 = 9, not 10).
- Loops start at index int(N - s * N) of the same schedule: n_l = N - that index steps.
- Faithful re-noise: the reference noises the loop latent to DDPM t = int(s * 1000) (400) but
  denoises from the schedule's timestep at the loop start (381 for the defaults).
"""
from __future__ import annotations

import math

import torch

TRAIN_TIMESTEPS = 1000


def appearance_start_index(steps: int, split: float) -> int:
    return min(steps, max(0, math.floor((1.0 - split) * steps)))


def loop_start_index(steps: int, split: float) -> int:
    return min(steps, max(0, int(steps - split * steps)))


def loop_step_count(steps: int, split: float) -> int:
    return steps - loop_start_index(steps, split)


def reference_renoise_timestep(split: float) -> int:
    return min(TRAIN_TIMESTEPS - 1, int(split * TRAIN_TIMESTEPS))


def renoise_coefficients(model_sampling, split: float, sigma_start: float, faithful: bool) -> tuple[float, float]:
    """(a, b) such that the loop starts from a * z + b * eps in ComfyUI's sigma-scaled latent space.

    ComfyUI's latent at sigma is x_vp * sqrt(1 + sigma^2). Clean mode noises z to sigma_start
    itself (a = 1, b = sigma_start); faithful mode noises to the reference's t = int(s * 1000).
    """
    if not faithful:
        return 1.0, float(sigma_start)
    sigma_t = float(model_sampling.sigma(torch.tensor(float(reference_renoise_timestep(split)))))
    alpha_bar = 1.0 / (1.0 + sigma_t ** 2)
    scale = math.sqrt(1.0 + float(sigma_start) ** 2)
    return math.sqrt(alpha_bar) * scale, math.sqrt(1.0 - alpha_bar) * scale


def reference_unet_calls(steps: int, split: float, loops: int) -> int:
    """CFG-batched UNet calls of the reference generation: stages B, C, D (3N) plus the loops."""
    return 3 * steps + loops * loop_step_count(steps, split)


def ezigen_unet_calls(steps: int, split: float, loops: int) -> int:
    """Ours with a one-evaluation-per-step sampler: the decoupled stage (N) plus the loops."""
    return steps + loops * loop_step_count(steps, split)

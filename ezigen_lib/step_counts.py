"""Step arithmetic of the layout/appearance split and the loops, exactly as the reference counts.

N = steps, s = split_ratio (the share of the schedule that transfers appearance).
- Decoupled stage: the adapter is on at step i iff (1 - s) * N < i + 1, i.e. from
  i0 = floor((1 - s) * N) on, evaluated in float arithmetic (s = 0.8, N = 50 gives i0 = 9, not 10).
- Loops start at index int(N - s * N) of the same schedule: n_l = N - that index steps.
- Faithful re-noise: the reference noises the loop latent to DDPM t = int(s * 1000) (400) but
  denoises from the schedule's timestep at the loop start (381 for the defaults).

docs/method.md sections 6 (gate), 7 (timesteps), 8 (loops), 10 (seeds), 11 (inversion grid), 14 (cost).
"""
from __future__ import annotations

import hashlib
import math

import torch

TRAIN_TIMESTEPS = 1000
SEED_SPACE = 2 ** 64  # the seed widgets' range: 0 .. 2^64 - 1


def derive_seed(seed: int, *path: int | str) -> int:
    """A seed of its own for each (stream, round, step) below one widget seed.

    `seed + k` both overflows at the widget's largest values and makes neighbouring rounds share
    noise streams; hashing the path gives every draw its own stream, deterministic per seed.
    """
    key = ":".join(str(part) for part in (seed % SEED_SPACE, *path)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # < 2^63: see sampler_seed


def sampler_seed(seed: int) -> int:
    """The seed handed to ComfyUI's samplers for the first pass: the widget's own, as KSampler does,
    except 2^64 - 1, which newer cores overflow (their CPU noise sampler seeds with seed + 1)."""
    return seed if seed < SEED_SPACE - 1 else derive_seed(seed, "sampler", 0)


def reference_timesteps(steps: int) -> list[int]:
    """The reference's DDPM "leading" timesteps, highest first: t = k * (1000 // N) + 1.

    Only N = 1000 would index past t = 999; there the grid is shifted down by one (999 .. 0) so that
    every level stays distinct.
    """
    ratio = max(1, TRAIN_TIMESTEPS // steps)
    offset = min(1, TRAIN_TIMESTEPS - 1 - (steps - 1) * ratio)
    return [k * ratio + offset for k in reversed(range(steps))]


def reference_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """`reference_timesteps` as a ComfyUI sigma schedule (ending at 0, the reference's final x0 step)."""
    timesteps = torch.tensor(reference_timesteps(steps), dtype=torch.float32)
    return torch.cat([model_sampling.sigma(timesteps).float().cpu(), torch.zeros(1)])


def reference_inversion_timesteps(steps: int, split: float) -> list[int]:
    """The timesteps the reference's inversion visits, from the clean latent to the editing pass's input.

    The reference builds its inverse DPM-Solver with `from_config` on SD2.1-base's PNDM config, which has
    no `timestep_spacing` key: the PNDM's "leading" is only a recorded default, `from_config` drops it and
    the inverse scheduler takes its own "linspace": round(k * 999 / N), k = 0 .. N - 1 (round half to even,
    on the same float64 products as np.linspace), repeats dropped (only N = 1000 has any), then t = 999.
    It breaks at the first step i with s * N <= i: ceil(s N) steps. N = 50, s = 0.4: 0, 20, ..., 380, 400.
    """
    spacing = (TRAIN_TIMESTEPS - 1) / steps
    levels = list(dict.fromkeys(round(k * spacing) for k in range(steps)))
    levels.append(TRAIN_TIMESTEPS - 1)  # the inverse scheduler's last sigma: sigma_max
    count = min(len(levels) - 1, max(1, math.ceil(split * steps)))
    return levels[:count + 1]


def vp_scale(sigma) -> float:
    """ComfyUI's latent at sigma is the reference's variance-preserving latent times sqrt(1 + sigma^2)."""
    return math.sqrt(1.0 + float(sigma) ** 2)


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
    scale = vp_scale(sigma_start)
    return math.sqrt(alpha_bar) * scale, math.sqrt(1.0 - alpha_bar) * scale


def reference_unet_calls(steps: int, split: float, loops: int) -> int:
    """CFG-batched UNet calls of the reference generation: stages B, C, D (3N) plus the loops."""
    return 3 * steps + loops * loop_step_count(steps, split)


def reference_edit_unet_calls(steps: int, split: float, loops: int) -> int:
    """CFG-batched UNet calls of the reference's editing: its unused stage B (N) plus the rounds."""
    return steps + loops * loop_step_count(steps, split)


def reference_inversion_calls(inversion_steps: int, loops: int) -> int:
    """Unguided inversion calls of the reference's editing: every round inverts its image anew."""
    return loops * inversion_steps


def ezigen_unet_calls(steps: int, split: float, loops: int) -> int:
    """Ours with a one-evaluation-per-step sampler: the decoupled stage (N) plus the loops."""
    return steps + loops * loop_step_count(steps, split)

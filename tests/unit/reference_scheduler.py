"""The reference's inverse scheduler, built the way the reference builds it, from shipped data.

infer.py loads SD2.1-base's PNDMScheduler and calls
``DPMSolverMultistepInverseScheduler.from_config(pipeline.scheduler.config)``. tests/data holds that
model's scheduler_config.json as published (written by diffusers 0.10, so it has no
``timestep_spacing`` key). Nothing here derives from the pack's own grid code.
"""
from __future__ import annotations

import json
from pathlib import Path

SD21_BASE_SCHEDULER_CONFIG = Path(__file__).resolve().parents[1] / "data" / "sd21_base_scheduler_config.json"


def reference_inverse_scheduler(steps: int):
    from diffusers import DPMSolverMultistepInverseScheduler, PNDMScheduler

    pndm = PNDMScheduler.from_config(json.loads(SD21_BASE_SCHEDULER_CONFIG.read_text()))
    scheduler = DPMSolverMultistepInverseScheduler.from_config(pndm.config)
    scheduler.set_timesteps(steps)
    return scheduler


def reference_inversion_steps(scheduler, steps: int, split: float) -> list[int]:
    """The timesteps the reference's inversion loop steps from: it breaks at the first i with s * N <= i."""
    visited = []
    for i, t in enumerate(scheduler.timesteps.tolist()):
        if split * steps <= i:
            break
        visited.append(t)
    return visited


def reference_inverse_levels(steps: int, split: float) -> list[int]:
    """Every timestep the inversion visits, the level it hands to editing included (the scheduler's next
    timestep, or t = 999 where its sigma list ends with sigma_max)."""
    scheduler = reference_inverse_scheduler(steps)
    visited = reference_inversion_steps(scheduler, steps, split)
    following = scheduler.timesteps.tolist()[len(visited):len(visited) + 1] or [scheduler.config.num_train_timesteps - 1]
    return visited + following

"""The refinement rounds that generation and editing share (docs/method.md sections 8 and 9).

Both modes make a first image (generation: the decoupled pass; editing: nothing, the source), then
run rounds of `loop_steps` subject-injected steps, each compared with the round before, until the
`LoopPolicy` stops them. What a round samples is each mode's own; everything around it lives here:
the settings both share, where the loops sit on the schedule, the interrupt check, the progress bar,
the round log, the stop rule, the result and its report.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

import comfy.model_management
import comfy.utils
import latent_preview

from .autostop import LoopPolicy
from .input_checks import require_choice, require_finite
from .core_details import fallback_notes, require_model_sampling
from .stage_sampling import require_finite_latent, sampling_schedule, schedule_report
from .step_counts import loop_start_index
from .similarity import clip_embeddings, cosine
from .vae_sample import encode_sample


@dataclass(frozen=True)
class LoopSettings:
    """What generation and editing are both asked for; each mode's settings add their own."""
    seed: int
    steps: int = 50
    cfg: float = 7.5
    sampler_name: str = "ddpm"
    scheduler: str = "ddim_uniform"
    split_ratio: float = 0.4
    policy: LoopPolicy = field(default_factory=LoopPolicy)
    mode: str = "faithful"  # faithful: the reference's maths; clean: the exact form (docs/method.md section 9)
    MODES: ClassVar[tuple[str, ...]] = ("faithful", "clean")

    def __post_init__(self):
        require_choice("mode", self.mode, self.MODES)
        require_finite("cfg", self.cfg)
        if not 0.0 <= self.split_ratio <= 1.0:
            raise ValueError(f"split_ratio must be in [0, 1], got {self.split_ratio}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def faithful(self) -> bool:
        """Every mode but clean follows the reference's maths."""
        return self.mode != "clean"


@dataclass(frozen=True)
class LoopPlan:
    """The schedule actually sampled and where the loops start on it (ComfyUI's ddim_uniform can give
    one step more than asked, so `steps` may exceed the widget's)."""
    sigmas: torch.Tensor
    schedule_name: str
    loop_start: int

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def loop_sigmas(self) -> torch.Tensor:
        return self.sigmas[self.loop_start:]

    @property
    def loop_steps(self) -> int:
        return self.steps - self.loop_start

    def schedule_report(self, model_sampling, requested_steps: int) -> dict:
        return schedule_report(model_sampling, self.sigmas, self.schedule_name, requested_steps)


def plan_loops(model_sampling, settings: LoopSettings) -> LoopPlan:
    require_model_sampling(model_sampling, "sigma", "timestep", "sigma_min",
                           purpose="the schedule's timesteps, the loops' re-noise and the inversion's levels")
    sigmas, name = sampling_schedule(model_sampling, settings.scheduler, settings.steps, settings.faithful)
    return LoopPlan(sigmas, name, loop_start_index(len(sigmas) - 1, settings.split_ratio))


class Progress:
    """One progress bar and live previews across all rounds (the total assumes the most loops)."""

    def __init__(self, model, total: int):
        self.total = total
        self.done = 0
        self.bar = comfy.utils.ProgressBar(total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def callback(self, step, x0, x, total_steps):
        preview = self.previewer.decode_latent_to_preview_image("JPEG", x0) if self.previewer else None
        self.bar.update_absolute(min(self.done + step + 1, self.total), self.total, preview)

    def finish_round(self, steps: int):
        self.done += steps

    def finish(self):
        self.bar.update_absolute(self.total, self.total)


def round_embedding(clip_vision, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    return clip_embeddings(clip_vision, image) if clip_vision is not None else latent.float()


class RoundLog:
    """Every round's image, each round's similarity to the one before (the autostop's input), and
    the seconds each loop took. The first round is the reference point, not a loop."""

    def __init__(self, clip_vision, first_image: torch.Tensor, first_latent: torch.Tensor):
        self.clip_vision = clip_vision
        self.images = [first_image]
        self.last_latent = first_latent
        self.similarities: list[float] = []
        self.seconds: list[float] = []
        self._previous = round_embedding(clip_vision, first_image, first_latent)

    @property
    def loops(self) -> int:
        return len(self.similarities)

    @property
    def last_similarity(self) -> float | None:
        return self.similarities[-1] if self.similarities else None

    @property
    def last_image(self) -> torch.Tensor:
        return self.images[-1]

    def add(self, vae, latent: torch.Tensor, started: float) -> torch.Tensor:
        """Decode a finished loop, compare it with the round before; returns its image."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        image = vae.decode(latent)
        embedding = round_embedding(self.clip_vision, image, latent)
        self.similarities.append(float(cosine(self._previous, embedding).min()))  # all of a batch must agree
        self._previous = embedding
        self.images.append(image)
        self.last_latent = latent
        self.seconds.append(round(time.perf_counter() - started, 3))
        return image

    def report(self) -> dict:
        return {
            "loops": self.loops,
            "similarities": [round(v, 5) for v in self.similarities],
            "similarity_metric": "clip_vision_cosine" if self.clip_vision is not None
            else "latent_cosine (no CLIP vision)",
        }

    def next_start(self, vae, sample_seed: int | None) -> torch.Tensor:
        """The latent the next round starts from: the last image re-encoded with a posterior sample seeded
        `sample_seed` (the reference's round trip through pixels), or, with None, the last latent as it is."""
        if sample_seed is None:
            return self.last_latent
        return encode_sample(vae, self.last_image[..., :3], sample_seed)

    def all_images(self) -> torch.Tensor:
        return torch.cat([image[..., :3] for image in self.images], dim=0)


def run_rounds(rounds: RoundLog, policy: LoopPolicy, sample_round: Callable[[int], torch.Tensor], vae,
               progress: Progress, round_steps: int, stage: str, first_round_always: bool = False) -> str:
    """Run rounds until `policy` stops them; returns why it stopped.

    `sample_round(k)` samples round k (from 1) and returns its latent; `stage` names round k in errors
    ("loop {}"). Generation asks the policy before every loop (its first pass is not one); editing has
    no first pass of its own, so its first round runs whatever the policy (`first_round_always`).
    """
    while True:
        if rounds.loops > 0 or not first_round_always:
            go_on, reason = policy.next_step(rounds.loops, rounds.last_similarity)
            if not go_on:
                return reason
        comfy.model_management.throw_exception_if_processing_interrupted()
        started = time.perf_counter()
        latent = require_finite_latent(sample_round(rounds.loops + 1), stage.format(rounds.loops + 1))
        progress.finish_round(round_steps)
        rounds.add(vae, latent, started)


@dataclass
class RoundsResult:
    """What the EZIGen Sampler and Edit return: the final latent and image, every round's image, the report."""
    latent: torch.Tensor | None  # raw VAE space, like any LATENT (None: nothing was sampled)
    image: torch.Tensor
    round_images: torch.Tensor  # every round's image, round-major along the batch
    report: dict

    def report_text(self) -> str:
        return json.dumps(self.report, indent=2)


def reports_core_fallbacks(run: Callable[..., RoundsResult]) -> Callable[..., RoundsResult]:
    """`run`'s report lists, under ``core_fallbacks``, the documented fallbacks taken for a changed core while it
    ran (also logged once, see `core_details.note_fallback`); empty on the cores the pack is tested on."""
    @functools.wraps(run)
    def reporting(*args, **kwargs) -> RoundsResult:
        with fallback_notes() as notes:
            result = run(*args, **kwargs)
        result.report["core_fallbacks"] = notes
        return result

    return reporting


def rounds_report(rounds: RoundLog | None, stop_reason: str, unet_evaluations: int, details: dict, mode: str,
                  started: float, warnings: list[str], seconds: dict | None = None,
                  subjects: list[dict] | None = None) -> dict:
    """The report both modes give: the rounds (none when nothing was sampled), why they stopped, the
    UNet calls, the mode's own `details`, the subject patches, then mode, seconds (`seconds`, the loops',
    the total), warnings."""
    summary = rounds.report() if rounds else {"loops": 0, "similarities": [], "similarity_metric": "none"}
    return {
        **summary,
        "stop_reason": stop_reason,
        "unet_evaluations": unet_evaluations,
        **details,
        "subjects": subjects or [],
        "mode": mode,
        "seconds": {**(seconds or {}), "loops_s": rounds.seconds if rounds else [],
                    "total_s": round(time.perf_counter() - started, 3)},
        "warnings": warnings,
    }

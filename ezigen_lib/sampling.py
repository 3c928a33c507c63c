"""Pieces shared by generation and editing: the schedule, where a stage starts, gating a model clone,
counting UNet calls, one progress bar across rounds, and the per-round embedding for the autostop."""
from __future__ import annotations

import time

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview
from comfy.patcher_extension import WrappersMP

from .inject import SIGMA_WINDOW_OPTION
from .schedule import reference_sigmas, reference_timesteps
from .similarity import clip_embeddings, cosine

ALWAYS_ON = (float("inf"), 0.0)
NEVER_ON = (-1.0, -1.0)
COUNTER_KEY = "ezigen_unet_call_counter"


class CallCounter:
    """PREDICT_NOISE wrapper: one call = one (CFG-batched) UNet evaluation of the sampler."""

    def __init__(self):
        self.calls = 0

    def __call__(self, executor, *args, **kwargs):
        self.calls += 1
        return executor(*args, **kwargs)


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


def with_window(model, window: tuple[float, float], counter: CallCounter):
    m = model.clone()
    m.model_options["transformer_options"][SIGMA_WINDOW_OPTION] = window
    m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, COUNTER_KEY, counter)
    return m


def sampling_schedule(model_sampling, scheduler: str, steps: int, faithful: bool) -> tuple[torch.Tensor, str]:
    """(sigmas, name): in faithful mode ddim_uniform is the reference's leading timesteps for every N
    (ComfyUI's own ddim_uniform has N + 1 steps when 1000 % N is large)."""
    if faithful and scheduler == "ddim_uniform":
        return reference_sigmas(model_sampling, steps), "reference (DDPM leading spacing)"
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu(), scheduler


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


def round_embedding(clip_vision, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    return clip_embeddings(clip_vision, image) if clip_vision is not None else latent.float()


class RoundLog:
    """Every round's image, each round's similarity to the one before (the autostop's input), and
    the seconds each loop took. The first round is the reference point, not a loop."""

    def __init__(self, clip_vision, first_image: torch.Tensor, first_latent: torch.Tensor):
        self.clip_vision = clip_vision
        self.images = [first_image]
        self.similarities: list[float] = []
        self.seconds: list[float] = []
        self._previous = round_embedding(clip_vision, first_image, first_latent)

    @property
    def loops(self) -> int:
        return len(self.similarities)

    @property
    def last_similarity(self) -> float | None:
        return self.similarities[-1] if self.similarities else None

    def add(self, vae, latent: torch.Tensor, started: float) -> torch.Tensor:
        """Decode a finished loop, compare it with the round before; returns its image."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        image = vae.decode(latent)
        embedding = round_embedding(self.clip_vision, image, latent)
        self.similarities.append(float(cosine(self._previous, embedding).min()))  # all of a batch must agree
        self._previous = embedding
        self.images.append(image)
        self.seconds.append(round(time.perf_counter() - started, 3))
        return image

    def report(self) -> dict:
        return {
            "loops": self.loops,
            "similarities": [round(v, 5) for v in self.similarities],
            "similarity_metric": "clip_vision_cosine" if self.clip_vision is not None
            else "latent_cosine (no CLIP vision)",
        }

    def all_images(self) -> torch.Tensor:
        return torch.cat([image[..., :3] for image in self.images], dim=0)

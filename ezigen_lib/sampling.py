"""Pieces shared by generation and editing: gating a model clone, counting UNet calls, one progress
bar across rounds, and the per-round embedding for the autostop."""
from __future__ import annotations

import torch

import comfy.utils
import latent_preview
from comfy.patcher_extension import WrappersMP

from .inject import SIGMA_WINDOW_OPTION
from .similarity import clip_embeddings

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


def round_embedding(clip_vision, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    return clip_embeddings(clip_vision, image) if clip_vision is not None else latent.float()

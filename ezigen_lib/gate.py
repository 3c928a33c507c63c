"""When a subject acts: the gate over noise levels and steps (docs/method.md sections 6 and 14).

A subject patch is on at some steps of a run only. Patch UNet Attention gives its start/end as sampling
percents: under a known schedule they gate by step index as the reference does, otherwise by the noise
window they span. The EZIGen Sampler and Edit replace them by a fixed sigma window of their own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .core_details import note_fallback
from .step_counts import appearance_start_index

NO_SCHEDULE = ("ComfyUI gives the blocks no transformer_options['sample_sigmas'] (the whole schedule): Patch UNet "
               "Attention gates the subject by noise level (start_percent/end_percent as ComfyUI's sampling "
               "percents) instead of the reference's step rule. The EZIGen Sampler and Edit are not affected.")
ALWAYS_ON = (float("inf"), 0.0)
NEVER_ON = (-1.0, -1.0)


def percent_sigma_range(model_sampling, start_percent: float, end_percent: float) -> tuple[float, float]:
    """IPAdapter-style sampling percents -> the sigma window in which the adapter runs."""
    return model_sampling.percent_to_sigma(start_percent), model_sampling.percent_to_sigma(end_percent)


@dataclass(frozen=True)
class Gate:
    """A subject's percents (and the sigma window they span), or a fixed `window` that replaces them."""
    model_sampling: object
    start_percent: float
    end_percent: float
    sigma_start: float  # without a known schedule: on while sigma_end <= sigma <= sigma_start
    sigma_end: float
    window: tuple[float, float] | None = None  # on while window[1] <= sigma <= window[0]

    @classmethod
    def from_percents(cls, model_sampling, start_percent: float, end_percent: float) -> Gate:
        start, end = percent_sigma_range(model_sampling, start_percent, end_percent)
        return cls(model_sampling, float(start_percent), float(end_percent), start, end)

    def with_window(self, window: tuple[float, float]) -> Gate:
        return dataclasses.replace(self, window=window)

    def active_mask(self, sigmas: torch.Tensor | None, batch: int,
                    schedule: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-sample gate (None = all on); the UNet batch is the latent batch times the cond chunks.

        A fixed `window` wins; else a whole schedule gates by step index as the reference does;
        else the sigma window of the percents."""
        if sigmas is None:
            return None
        sigmas = sigmas.flatten().float()
        on = self._step_gate(sigmas, schedule) if self.window is None else None
        if on is None:
            sigma_start, sigma_end = self.window or (self.sigma_start, self.sigma_end)
            on = (sigmas <= sigma_start) & (sigmas >= sigma_end)
        if batch % on.numel() == 0:
            return on.repeat(batch // on.numel())
        return on.any().expand(batch)

    def _step_gate(self, sigmas: torch.Tensor, schedule: torch.Tensor | None) -> torch.Tensor | None:
        """On at step i iff (1 - s) N < i + 1 in float arithmetic, s = 1 - start_percent (the reference's
        skip_adapter_ratio rule), for a schedule that starts at the top of the noise range (not the
        tail of a denoise < 1 run, where the percents keep their ComfyUI meaning of noise levels)."""
        if schedule is None:
            note_fallback(NO_SCHEDULE)
            return None
        if len(schedule) < 2:
            return None
        levels = schedule[:-1].flatten().float().cpu()
        steps = len(levels)
        if float(levels[0]) < float(self.model_sampling.percent_to_sigma(1.0 / steps)):
            return None
        match = torch.isclose(sigmas.cpu()[:, None], levels[None], rtol=1e-4, atol=0.0)
        if not bool(match.any(dim=1).all()):
            return None
        index = match.float().argmax(dim=1)
        first = appearance_start_index(steps, 1.0 - self.start_percent)
        stop = appearance_start_index(steps, 1.0 - self.end_percent)
        return ((index >= first) & (index < stop)).to(sigmas.device)

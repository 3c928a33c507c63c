"""EZIGen Edit's rounds: each takes the current image back to the editing start by inversion (`inversion.py`) and
regenerates the masked region over the last steps with the subject injected, putting the background back from the
first round's inversion trajectory after every step (docs/method.md section 11)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import comfy.sample
import comfy.samplers

from .crop import WorkInputs
from .gate import ALWAYS_ON
from .inversion import Inverter, backgrounds
from .inversion_text import InversionText, inversion_conditioning
from .rounds import LoopPlan, RoundLog
from .stage_sampling import CallCounter, with_window
from .step_counts import derive_seed, reference_edit_unet_calls, reference_inversion_calls, vp_scale
from .vae_sample import encode_image


def _blend_sampler(step_sampler, background: list[torch.Tensor], latent_mask: torch.Tensor, seed: int,
                   edit_round: int):
    """A sampler that runs `step_sampler` one interval at a time and, after every step, puts the
    background back: x = m * x + (1 - m) * background[i] scaled to the new noise level."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = dict(extra_args or {})
        m = latent_mask.to(x.device, x.dtype)
        for i in range(len(sigmas) - 1):
            extra_args["seed"] = derive_seed(seed, "edit", edit_round, i)  # every (round, step) its own draw
            step_callback = None if callback is None else functools.partial(_shift_step, callback, i)
            x = step_sampler.sampler_function(model, x, sigmas[i:i + 2], extra_args=extra_args, callback=step_callback,
                                              disable=True, **step_sampler.extra_options)
            x = m * x + (1 - m) * background[i].to(x.device, x.dtype) * vp_scale(sigmas[i + 1])
        return x

    return comfy.samplers.KSAMPLER(sample)


def _shift_step(callback, i, d):
    callback({**d, "i": i})


@dataclass
class EditRounds:
    """The rounds of one edit, as `begin_rounds` makes them: `sample(k)` is round k's latent; `details` reports the
    rounds' schedule, inversion and evaluations."""
    inverter: Inverter
    vae: object
    work: WorkInputs
    plan: LoopPlan
    settings: object  # edit.EditSettings
    log: RoundLog  # the first round is the source
    first_start: torch.Tensor  # round 1's start: the source's inversion placed at the editing start
    background: list[torch.Tensor]  # what every round puts back after step i
    edit_model: object  # the subject-injected model, counting its calls in `counter`
    counter: CallCounter
    progress_callback: object

    def sample(self, k: int, positive, negative) -> torch.Tensor:
        """Round k regenerates the masked region from the inversion of round k - 1's image."""
        seed = self.settings.seed
        if k == 1:
            start = self.first_start
        else:  # faithful re-encodes the decoded image, clean keeps the latent
            latent = self.log.next_start(self.vae, derive_seed(seed, "vae", k - 1) if self.settings.faithful else None)
            start = self.inverter.start(self.inverter.trajectory(latent), k - 1)
        sampler = _blend_sampler(comfy.samplers.ksampler(self.settings.sampler_name), self.background,
                                 self.work.latent_mask, seed, k - 1)
        return comfy.sample.sample_custom(self.edit_model, torch.zeros_like(start), self.settings.cfg, sampler,
                                          self.plan.loop_sigmas, positive, negative, start,
                                          callback=self.progress_callback, disable_pbar=True,
                                          seed=derive_seed(seed, "edit", k - 1))

    def details(self, area_report: str | dict, output_size: list[int]) -> dict:
        """The edit's own part of the report."""
        plan, settings, inverter = self.plan, self.settings, self.inverter
        ms, inversion_steps = inverter.model_sampling, len(inverter.levels) - 1
        return {
            "crop": area_report,
            "inversion_evaluations": inverter.counter.calls,
            "reference_unet_evaluations": reference_edit_unet_calls(plan.steps, settings.split_ratio, self.log.loops),
            "reference_inversion_evaluations": reference_inversion_calls(inversion_steps, self.log.loops),
            "processing_size": list(self.work.image.shape[1:3]), "output_size": output_size,
            "inversion": f"{settings.solver} over {inversion_steps} steps",
            "inversion_timesteps": [round(float(ms.timestep(s)), 2) for s in inverter.levels],
            **plan.schedule_report(ms, settings.steps),
        }


def begin_rounds(model, vae, inversion_context: torch.Tensor | InversionText, work: WorkInputs, plan: LoopPlan,
                 settings, clip_vision, progress_callback) -> EditRounds:
    """An edit's rounds, ready to sample: the source encoded and inverted once (round 1's start, and the
    background every round puts back), the round log started with the source. `settings` is edit.EditSettings."""
    faithful = settings.faithful
    source_latent = encode_image(vae, work.image, derive_seed(settings.seed, "vae", 0) if faithful else None)
    conditioning = inversion_conditioning(model, inversion_context, tuple(work.image.shape[1:3]))
    inverter = Inverter(model, conditioning, plan, settings.split_ratio, settings.solver, faithful)
    vp = inverter.trajectory(source_latent)
    background = backgrounds(vp, plan.loop_steps, faithful)
    first_start = inverter.start(vp, 0)
    log = RoundLog(clip_vision, work.image, source_latent)
    counter = CallCounter()
    return EditRounds(inverter, vae, work, plan, settings, log, first_start, background,
                      with_window(model, ALWAYS_ON, counter), counter, progress_callback)

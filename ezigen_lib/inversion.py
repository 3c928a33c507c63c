"""Partial inversion of a source latent with the unpatched base model, keeping the whole trajectory.

The reference inverts with DPM-Solver++(2M) run backwards (noise level rising), no CFG, and an
"exceptional" text: every token id 7788 with no position embeddings. Its timesteps are the inverse
scheduler's linspace grid, 0, 20, 40, ..., 400 for 50 steps (schedule.reference_inversion_timesteps):
ceil(s * N) steps, ending at about t = 1000 s. Euler (= deterministic DDIM) inversion is the simpler option.
"""
from __future__ import annotations

import functools

import torch

import comfy.model_management
import comfy.samplers

from .schedule import vp_scale

EXCEPTIONAL_TOKEN_ID = 7788
SOLVERS = ("dpmpp_2m", "euler")


def text_encoder_device(clip) -> torch.device:
    """Where ComfyUI runs this CLIP's text encoder.

    Newer cores may keep the text encoder's weights off the GPU and cast them on the fly, telling
    the encoder the compute device through its ``execution_device`` option (set from the CLIP
    patcher's load device). The device of the embedding weights is only the last resort (old cores
    without either, where weights always sit on the compute device).
    """
    wrapper = clip.cond_stage_model
    encoder = getattr(wrapper, wrapper.clip)
    device = getattr(encoder, "execution_device", None)
    if device is None:
        device = getattr(getattr(clip, "patcher", None), "load_device", None)
    if device is None:
        device = encoder.transformer.text_model.embeddings.token_embedding.weight.device
    return torch.device(device)


def exceptional_prompt(clip) -> torch.Tensor:
    """(1, 77, D) text context: token 7788 everywhere, positions cancelled, through the text encoder.

    ComfyUI's text model adds position embeddings to given embeddings, so we give
    E_tok[7788] - E_pos and the sum is the bare token embedding, as in the reference. It runs on
    :func:`text_encoder_device`, like the core's own prompt encoding.
    """
    clip.load_model()
    wrapper = clip.cond_stage_model
    encoder = getattr(wrapper, wrapper.clip)
    embeddings = encoder.transformer.text_model.embeddings
    device = text_encoder_device(clip)
    token = embeddings.token_embedding.weight[EXCEPTIONAL_TOKEN_ID].float()
    positions = embeddings.position_embedding.weight.float()
    embeds = (token.to(device)[None] - positions.to(device))[None]
    hidden = encoder.layer == "hidden"
    outputs = encoder.transformer(None, None, embeds=embeds, num_tokens=[embeds.shape[1]],
                                  intermediate_output=encoder.layer_idx if hidden else None,
                                  final_layer_norm_intermediate=encoder.layer_norm_hidden_state, dtype=torch.float32)
    context = outputs[1] if hidden else outputs[0]
    return context.float().to(comfy.model_management.intermediate_device())


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


def invert(model, context: torch.Tensor, latent: torch.Tensor, sigmas: torch.Tensor, solver: str = "dpmpp_2m"
           ) -> list[torch.Tensor]:
    """Trajectory [x at sigmas[0], ..., x at sigmas[-1]] (ComfyUI's sigma-scaled latent space) of the
    raw VAE `latent`, placed at sigmas[0] as the reference treats the clean latent, with no CFG.

    `model` must not inject a subject (the caller passes a gated-off clone).
    """
    if solver not in _SOLVER_FUNCTIONS:
        raise ValueError(f"inversion solver must be one of {SOLVERS}, got {solver!r}")
    trajectory: list[torch.Tensor] = []
    sampler = comfy.samplers.KSAMPLER(functools.partial(_SOLVER_FUNCTIONS[solver], trajectory=trajectory))
    guider = comfy.samplers.CFGGuider(model)
    conditioning = [[context, {}]]
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    start = latent * vp_scale(sigmas[0])  # x_vp = z at the first level, as x_ve
    if len(sigmas) == 1:  # editing starts at the lowest level itself: nothing to invert
        return [model.model.process_latent_in(start).to(comfy.model_management.intermediate_device())]
    guider.sample(torch.zeros_like(start), start, sampler, sigmas, disable_pbar=True, seed=0)
    return [x.to(comfy.model_management.intermediate_device()) for x in trajectory]

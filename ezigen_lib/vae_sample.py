"""A seeded sample of a KL VAE's posterior, where ComfyUI's VAE.encode returns its mean.

The reference encodes with ``latent_dist.sample()``: the faithful mode does the same, with noise from
a seeded generator so that a seed still fixes the result. The sample is taken inside ComfyUI's own
encode (a forward hook on the VAE's Gaussian regularizer), so device, dtype, batching and tiling
stay ComfyUI's. The hook must run: a KL VAE whose regularizer is missing, unknown or not called by
encode is a changed core, and the run stops (`core_details.CoreChangedError`). VAEs without a Gaussian posterior
(TAESD and the like) give their one encoding: the documented fallback, said once in the log and in the
report (`core_details.note_fallback`).
"""
from __future__ import annotations

import torch

from .core_details import core_changed, note_fallback

LOGVAR_RANGE = (-30.0, 20.0)  # the clamp every KL VAE of the SD family applies to its log-variance
HOOK = "the faithful mode's seeded sample of the VAE posterior (the reference's latent_dist.sample())"
GAUSSIAN = "DiagonalGaussianRegularizer"
NO_POSTERIOR = "EmptyRegularizer"  # ComfyUI's regularizer of VAEs with a deterministic latent


def no_posterior_note(vae) -> str:
    model = getattr(vae, "first_stage_model", None)
    kind = type(vae if model is None else model).__name__
    return (f"the VAE ({kind}) has no Gaussian posterior to sample: faithful mode encodes with its "
            "one deterministic latent where the reference samples (use the checkpoint's KL VAE for the reference's "
            "sampled round trips).")


def _gaussian_regularizer(vae):
    """The KL VAE's posterior regularizer to hook, or None for a VAE without one (TAESD and the like)."""
    model = getattr(vae, "first_stage_model", None)
    if model is None:  # another pack's VAE-like object: only its encode is known
        return None
    engine = any(cls.__name__ == "AutoencodingEngine" for cls in type(model).__mro__)
    regularization = getattr(model, "regularization", None)
    if regularization is None:
        if engine:  # ComfyUI's KL VAEs are AutoencodingEngines with a regularizer
            raise core_changed(f"{type(model).__name__}.regularization (the KL VAE's posterior)", HOOK)
        return None
    name = type(regularization).__name__
    if name == GAUSSIAN:
        return regularization
    if name == NO_POSTERIOR:
        return None
    raise core_changed(f"the KL VAE's {GAUSSIAN} (this VAE's regularizer is {name})", HOOK)


def encode_sample(vae, pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """`vae.encode(pixels)` with the latent drawn from the posterior, mean + std * n, n seeded."""
    regularization = _gaussian_regularizer(vae)
    if regularization is None:
        note_fallback(no_posterior_note(vae))
        return vae.encode(pixels)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    fired = []

    def sample(module, inputs, output):
        (moments,) = inputs
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * logvar.float().clamp(*LOGVAR_RANGE))
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
        fired.append(True)
        return (mean.float() + std * noise).to(mean.dtype), *output[1:]

    handle = regularization.register_forward_hook(sample)
    try:
        latent = vae.encode(pixels)
    finally:
        handle.remove()
    if not fired:
        raise core_changed(f"VAE.encode calling the KL VAE's {GAUSSIAN} (it returned without running it)", HOOK)
    return latent


def encode_image(vae, pixels: torch.Tensor, sample_seed: int | None) -> torch.Tensor:
    """The latent of `pixels`: a posterior sample seeded `sample_seed` (the reference's encoding), or with None
    ComfyUI's usual `vae.encode`."""
    return vae.encode(pixels) if sample_seed is None else encode_sample(vae, pixels, sample_seed)

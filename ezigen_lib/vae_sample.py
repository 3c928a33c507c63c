"""A seeded sample of a KL VAE's posterior, where ComfyUI's VAE.encode returns its mean.

The reference encodes with ``latent_dist.sample()``: the faithful mode does the same, with noise from
a seeded generator so that a seed still fixes the result. The sample is taken inside ComfyUI's own
encode (a forward hook on the VAE's Gaussian regularizer), so device, dtype, batching and tiling
stay ComfyUI's. VAEs without a Gaussian posterior (TAESD and the like) give their one encoding.
"""
from __future__ import annotations

import torch

LOGVAR_RANGE = (-30.0, 20.0)  # the clamp every KL VAE of the SD family applies to its log-variance


def _gaussian_regularizer(vae):
    regularization = getattr(getattr(vae, "first_stage_model", None), "regularization", None)
    if regularization is None or type(regularization).__name__ != "DiagonalGaussianRegularizer":
        return None
    return regularization


def has_posterior(vae) -> bool:
    return _gaussian_regularizer(vae) is not None


def encode_sample(vae, pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """`vae.encode(pixels)` with the latent drawn from the posterior, mean + std * n, n seeded."""
    regularization = _gaussian_regularizer(vae)
    if regularization is None:
        return vae.encode(pixels)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample(module, inputs, output):
        (moments,) = inputs
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * logvar.float().clamp(*LOGVAR_RANGE))
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
        return (mean.float() + std * noise).to(mean.dtype), *output[1:]

    handle = regularization.register_forward_hook(sample)
    try:
        return vae.encode(pixels)
    finally:
        handle.remove()

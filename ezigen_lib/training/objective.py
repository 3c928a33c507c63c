"""The objective of one training batch: the subject's features at t = 1, the noised target, the UNet's
prediction with every adapter on, the MSE (docs/method.md section 15).

The UNet and its family are the frozen model's; the adapters are the trainer's, which optimises them. A UNet
with added conditioning (SDXL) gets its ``y`` in both passes, as upstream's SDXL trainer builds it (doc A5):
pooled text + size ids original (res, res) for the subject, original = the family's native size for the target.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

import comfy.model_base

from ..adapter import AdapterSet
from ..capture import capture_features
from ..core_details import require_model_sampling
from ..family import Family, layer_modules
from .data import MAX_SUBJECTS

TextFeatures = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]  # context, or (context, pooled)


class TrainingInjection:
    """middle_patch for training: each example's own subject tokens, adapters always on, no caching.

    `features[k]` is a list with one (1, M_i, C) tensor per example. Examples with different numbers
    of subjects attend only to their own tokens (the padding mask the reference computes but never
    applies), so no padded slot is ever attended.
    """

    def __init__(self, family: Family, adapters: AdapterSet, features: list[list[torch.Tensor]],
                 checkpointing: bool):
        self.family, self.adapters, self.features, self.checkpointing = family, adapters, features, checkpointing

    def __call__(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor:
        slot = self.family.layer_at(extra_options, "which adapter a block trains").index
        per_example = self.features[slot]
        same_length = len({f.shape[1] for f in per_example}) == 1
        groups = [(slice(None), torch.cat(per_example))] if same_length else \
            [(slice(i, i + 1), f) for i, f in enumerate(per_example)]
        precision = extra_options.get("attn_precision")

        def residual(h, subject):
            k, v = self.adapters.subject_kv(slot, subject.to(h.dtype))
            return self.adapters.blocks[slot].residual(h, k, v, attn_precision=precision)

        out = []
        for rows, subject in groups:
            h = x[rows]
            if self.checkpointing and torch.is_grad_enabled():
                out.append(torch.utils.checkpoint.checkpoint(residual, h, subject, use_reentrant=False))
            else:
                out.append(residual(h, subject))
        return x + torch.cat(out)


def init_adapters_from_unet(adapters: AdapterSet, unet) -> None:
    """The reference's initialisation: each adapter copies its layer's attn1 and norm1 (no zero-init)."""
    layers = layer_modules(unet)
    if len(layers) != len(adapters.blocks):  # zip would leave adapters uninitialised
        raise ValueError(f"{len(adapters.blocks)} adapters for a UNet of {len(layers)} transformer layers")
    with torch.no_grad():
        for adapter, block in zip(adapters.blocks, layers):
            for name in ("to_q", "to_k", "to_v"):
                getattr(adapter, name).weight.copy_(getattr(block.attn1, name).weight)
            adapter.to_out[0].weight.copy_(block.attn1.to_out[0].weight)
            adapter.to_out[0].bias.copy_(block.attn1.to_out[0].bias)
            adapter.norm.weight.copy_(block.norm1.weight)
            adapter.norm.bias.copy_(block.norm1.bias)
        adapters.learnable_weights.fill_(1.0)


class Objective:
    """The loss of a batch for `adapters` on the frozen `base` model (a BaseModel), its VAE and text encoder.

    Draws from `rng` (text and subject dropout) and torch's global generator (noise, timesteps) in the
    reference's order, so a seeded trainer repeats its steps exactly. `encode_text(captions)` gives the
    context, or (context, pooled) where the UNet takes added conditioning (SDXL).
    """

    def __init__(self, base, vae, encode_text: Callable[[list[str]], TextFeatures], family: Family,
                 adapters: AdapterSet, settings, device: torch.device, rng: random.Random):
        self.base, self.vae, self.encode_text, self.family = base, vae, encode_text, family
        self.adapters, self.settings, self.device, self.rng = adapters, settings, device, rng
        self.unet = base.diffusion_model
        model_sampling = require_model_sampling(base.model_sampling, "sigmas",
                                                purpose="the training noise levels (alphas_cumprod)")
        sigmas = model_sampling.sigmas.float().cpu()
        self.alphas_cumprod = (1.0 / (1.0 + sigmas ** 2)).to(device)
        self.v_prediction = base.model_type == comfy.model_base.ModelType.V_PREDICTION
        self.takes_adm = bool(getattr(base, "adm_channels", 0))

    def _text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            out = self.encode_text(captions)
        context, pooled = out if isinstance(out, tuple) else (out, None)
        return context.to(self.device), None if pooled is None else pooled.to(self.device)

    def added_conditioning(self, pooled: torch.Tensor | None, original: int, target: int) -> torch.Tensor | None:
        """SDXL's ``y``, one row per pooled row: pooled text + size ids (original, original, 0, 0, target, target)
        by ComfyUI's own ``encode_adm``; None for a UNet without (SD1.x/SD2.x)."""
        if not self.takes_adm:
            return None
        if pooled is None:
            raise ValueError(f"the {self.family.name} UNet takes added conditioning (pooled text + size ids) but the "
                             "text encoder gave no pooled embedding: use the checkpoint's own CLIP")
        with torch.no_grad():
            adm = self.base.encode_adm(pooled_output=pooled, width=original, height=original, crop_w=0, crop_h=0,
                                       target_width=target, target_height=target)
        return adm.to(self.device, torch.float32)

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.base.process_latent_in(self.vae.encode(pixels).float()).to(self.device)

    def _noised(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * z + (1 - a).sqrt() * eps

    def _unet(self, x, t, context, patch_name: str, patch, y: torch.Tensor | None = None) -> torch.Tensor:
        options = {"patches": {patch_name: [patch]}}
        return self.unet(x, t.float(), context=context, y=y, transformer_options=options)

    def subject_features(self, subject_sets: list[torch.Tensor], caption_sets: list[list[str]]) -> list[list[torch.Tensor]]:
        """Per slot, one (1, n_i * HW, C) tensor per example: its subjects at t = 1, tokens concatenated."""
        if self.settings.faithful_padding:  # grey images in the empty slots, as the reference pads them
            subject_sets = [torch.cat([s, torch.full((MAX_SUBJECTS - len(s), *s.shape[1:]), 0.5)]) for s in subject_sets]
            caption_sets = [c + [""] * (MAX_SUBJECTS - len(c)) for c in caption_sets]
        pixels = torch.cat(subject_sets)
        z_s = self._latents(pixels)
        context, pooled = self._text([c for captions in caption_sets for c in captions])
        resolution = pixels.shape[1]  # upstream's subject ids in training: original = target = (res, res)
        adm = self.added_conditioning(pooled, resolution, resolution)
        return self.features_from_latents(z_s, torch.randn_like(z_s), context, [len(s) for s in subject_sets], adm)

    def features_from_latents(self, latent: torch.Tensor, noise: torch.Tensor, context: torch.Tensor,
                              counts: list[int], adm: torch.Tensor | None = None) -> list[list[torch.Tensor]]:
        """subject_features after the VAE, text encoder and noise draw (clean latents in model space, one
        context row per subject image, `adm` one row per image or None), public so a test can give it and
        Encode Subject the same inputs."""
        features = capture_features(self.base, latent, noise, context, self.device, self.device, torch.float32,
                                    adm=adm)
        return [[f.reshape(1, -1, f.shape[-1]) for f in features[k].split(counts)] for k in range(len(self.family.layers))]

    def loss(self, batch: dict) -> torch.Tensor:
        s = self.settings
        z_t = self._latents(batch["target"])
        batch_size = z_t.shape[0]
        captions = [("" if self.rng.random() < s.text_dropout else c) for c in batch["caption"]]
        context, pooled = self._text(captions)
        adm = self.added_conditioning(pooled, self.family.native_resolution, batch["target"].shape[1])
        features = self.subject_features(batch["subjects"], batch["subject_captions"])
        if self.rng.random() < s.effective_subject_dropout:
            features = [[torch.zeros_like(f) for f in slot] for slot in features]
        t = self._timesteps(batch, batch_size)
        eps = torch.randn_like(z_t)
        noisy = self._noised(z_t, t, eps)
        injection = TrainingInjection(self.family, self.adapters, features, s.gradient_checkpointing)
        with self._autocast():
            prediction = self._unet(noisy, t, context, "middle_patch", injection, adm)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        target = a.sqrt() * eps - (1 - a).sqrt() * z_t if self.v_prediction else eps
        return F.mse_loss(prediction.float(), target)

    def _timesteps(self, batch: dict, batch_size: int) -> torch.Tensor:
        """t ~ U{0 .. 999}; with staged timesteps each example's own range (upstream's SDXL run, doc A5)."""
        if not self.settings.staged_timesteps:
            return torch.randint(0, len(self.alphas_cumprod), (batch_size,), device=self.device)
        ranges = batch.get("timesteps") or [None] * batch_size
        last = len(self.alphas_cumprod) - 1
        lows, highs = zip(*[r or (0, last) for r in ranges])
        low, high = torch.tensor(lows), torch.tensor(highs)
        return (low + (torch.rand(batch_size) * (high - low + 1)).long().clamp(max=high - low)).to(self.device)

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.settings.mixed_precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

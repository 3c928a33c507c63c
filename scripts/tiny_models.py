"""Tiny models with the SD1.x/SD2.x block layout, built from ComfyUI's own classes (the unit tests' and
scripts/record_outputs.py's models).

Same 16 depth-1 transformers in the same places as SD2.1-base, but 32/64/128 channels, so a
forward pass takes milliseconds on a CPU.
"""
from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

REPO = Path(__file__).resolve().parents[1]

TINY_CHANNELS = 64
TINY_HEAD_DIM = 32
TINY_CONTEXT = 32
SD_WIDTH_MULTS = (1, 1, 2, 2, 4, 4, 4, 4, 4, 4, 2, 2, 2, 1, 1, 1)  # the 16 layers of SD1.x/SD2.x, in run order
SD_BLOCKS = (*(("input", i) for i in (1, 2, 4, 5, 7, 8)), ("middle", 0), *(("output", i) for i in range(3, 12)))
"""ComfyUI's ``block`` of each of the 16 layers, written out independently of the pack's family module."""
SD_REFERENCE_PREFIXES = (
    *(f"down_blocks.{level}.attentions.{a}.transformer_blocks.0" for level in range(3) for a in range(2)),
    "mid_block.attentions.0.transformer_blocks.0",
    *(f"up_blocks.{level}.attentions.{a}.transformer_blocks.0" for level in (1, 2, 3) for a in range(3)))
"""The reference checkpoint's name of each of the 16 layers (before ``.adapter...``)."""


def slot_widths(model_channels: int) -> list[int]:
    """The layer widths of an SD1.x/SD2.x-layout UNet whose first level has `model_channels` channels."""
    return [model_channels * m for m in SD_WIDTH_MULTS]


def _unet_config(context_dim: int, model_channels: int) -> dict:
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "context_dim": context_dim, "use_linear_in_transformer": True, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
        "dtype": torch.float32,
    }


class TinySD(comfy.supported_models_base.BASE):
    unet_config = {}
    unet_extra_config = {"num_heads": -1, "num_head_channels": TINY_HEAD_DIM}
    latent_format = comfy.latent_formats.SD15
    memory_usage_factor = 1.0


def init_random(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """ComfyUI layers skip initialisation: give every tensor seeded values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            elif p.ndim == 1:
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def tiny_model(seed: int = 0, context_dim: int = TINY_CONTEXT, model_channels: int = TINY_CHANNELS,
               dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype | None = None,
               attn_precision: torch.dtype | None = None, round_to: torch.dtype | None = None):
    """`dtype`: the weights, cast as ComfyUI stores them (on a CPU it then computes in fp32, as its
    unet_manual_cast decides); `compute_dtype` forces the compute dtype as a GPU would (ModelComputeDtype);
    `attn_precision` as SD2.x sets it (fp32 attention); `round_to`: weights rounded to that dtype but kept
    in `dtype` (an fp32 reference with exactly a half-precision model's weights)."""
    config = TinySD(_unet_config(context_dim, model_channels))
    config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(dtype, torch.device("cpu")))
    if attn_precision is not None:
        config.unet_config["attn_precision"] = attn_precision
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS, device="cpu")
    init_random(base.diffusion_model, seed)  # the same values whatever the dtype, rounded to it
    if round_to is not None:
        with torch.no_grad():
            for p in base.diffusion_model.parameters():
                p.copy_(p.to(round_to).to(p.dtype))
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    if compute_dtype is not None:
        patcher.set_model_compute_dtype(compute_dtype)
    return patcher


def random_adapter_state(seed: int = 1, model_channels: int = TINY_CHANNELS,
                         widths: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """Canonical adapter tensors for the tiny SD layout, or for layers of `widths` (another family's)."""
    g = torch.Generator().manual_seed(seed)
    widths = slot_widths(model_channels) if widths is None else widths
    sd = {}
    for k, w in enumerate(widths):
        for name in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"):
            sd[f"blocks.{k}.{name}"] = torch.randn(w, w, generator=g) * 0.1
        sd[f"blocks.{k}.to_out.0.bias"] = torch.randn(w, generator=g) * 0.01
        sd[f"blocks.{k}.norm.weight"] = 1.0 + torch.randn(w, generator=g) * 0.05
        sd[f"blocks.{k}.norm.bias"] = torch.randn(w, generator=g) * 0.01
    sd["learnable_weights"] = 1.0 + torch.randn(len(widths), generator=g) * 0.1
    return sd


def load_pack():
    """Import the repository as the ComfyUI package it is (its nodes use relative imports)."""
    name = "comfyui_ezigen_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_vae(seed: int = 2):
    """A real ComfyUI VAE object around a randomly initialised TAESD (4-channel latents, /8)."""
    import comfy.sd
    import comfy.taesd.taesd

    module = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_random(module, seed, std=0.02)
    return comfy.sd.VAE(sd=module.state_dict())


def tiny_encoder(adapter_seed: int = 1, model_seed: int = 0, dtype: torch.dtype = torch.float32, **model_kw):
    """An EZIGEN_ENCODER over a tiny model, built the way the loader node builds it (adapter in `dtype`)."""
    from ezigen_lib.checkpoint import AdapterInfo
    from ezigen_lib.encoder import EZIGenEncoder, adapter_patcher
    info = AdapterInfo(widths=tuple(slot_widths(TINY_CHANNELS)), head_dim=TINY_HEAD_DIM, base_model="tiny",
                       source="test")
    model = tiny_model(model_seed, dtype=dtype, **model_kw)
    round_to = model_kw.get("round_to") or dtype
    state = {k: v.to(round_to).to(dtype) for k, v in random_adapter_state(adapter_seed).items()}
    return EZIGenEncoder(model=model, adapter=adapter_patcher(state, info), info=info)


def random_context(seed: int = 0, batch: int = 1, tokens: int = 7, width: int = TINY_CONTEXT) -> torch.Tensor:
    return torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(seed))


def sample(model, seed: int = 0, steps: int = 10, cfg: float = 5.0, batch: int = 1, size: int = 8,
           sampler: str = "euler", scheduler: str = "ddim_uniform", noise: torch.Tensor | None = None,
           pooled_dim: int | None = None, context_width: int = TINY_CONTEXT):
    """A stock ComfyUI sampling run (the KSampler code path) with random text conditioning `context_width` wide;
    `pooled_dim`: the conditioning also carries a random pooled text embedding of that width (SDXL's)."""
    import comfy.sample

    if noise is None:
        noise = torch.randn((batch, 4, size, size), generator=torch.Generator().manual_seed(seed))

    def options(seed_: int) -> dict:
        if pooled_dim is None:
            return {}
        return {"pooled_output": torch.randn(1, pooled_dim, generator=torch.Generator().manual_seed(seed_))}

    positive = [[random_context(100, width=context_width), options(102)]]
    negative = [[random_context(101, width=context_width), options(103)]]
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative,
                                   torch.zeros_like(noise), disable_pbar=True, seed=seed)


def tiny_sdxl_like(depths: tuple[int, int] = (2, 2), seed: int = 0):
    """SDXL's shape of UNet in miniature: no attention at the first level, SpatialTransformers of several layers
    below (`depths` per level; SDXL's are 2 and 10, and its middle block has the deeper one's)."""
    config = _unet_config(TINY_CONTEXT, TINY_CHANNELS)
    config.update(transformer_depth=[0, 0, depths[0], depths[0], depths[1], depths[1]],
                  transformer_depth_output=[0, 0, 0, depths[0], depths[0], depths[0], depths[1], depths[1], depths[1]],
                  channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2], transformer_depth_middle=depths[1])
    base = comfy.model_base.BaseModel(TinySD(config), model_type=comfy.model_base.ModelType.EPS, device="cpu")
    init_random(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_flux():
    """A miniature FLUX (a DiT, no UNet blocks), built from ComfyUI's Flux classes."""
    import dataclasses

    import comfy.ldm.flux.model
    import comfy.supported_models

    dit_config = {
        "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
        "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True, "patch_size": 2}
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        dit_config["txt_ids_dims"] = []  # newer cores (0.8.0) name the text position axes; FLUX.1 has none
    config = comfy.supported_models.Flux(dit_config)
    base = comfy.model_base.Flux(config, device="cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def patched_tiny(start_percent: float, end_percent: float, dtype: torch.dtype = torch.float32, **model_kw):
    """A tiny model patched with a tiny subject, and its VAE: the EZIGen Sampler's and Edit's input.
    `dtype` and `model_kw` (compute_dtype, attn_precision) apply to both UNets and the adapter."""
    from ezigen_lib.capture import encode_subject
    from ezigen_lib.inject import apply_subject

    encoder, vae = tiny_encoder(dtype=dtype, **model_kw), tiny_vae()
    subject_image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        subject = encode_subject(encoder.model, vae, random_context(), subject_image, None, 0, 64,
                                 encoder.info.widths)
    model = tiny_model(7, dtype=dtype, **model_kw)
    return apply_subject(model, encoder, subject, 1.0, start_percent, end_percent), vae


def encode_text(captions: list[str]) -> torch.Tensor:
    """A fixed random context per caption (the tiny model has no real text encoder)."""
    return torch.cat([torch.randn(1, 7, TINY_CONTEXT, generator=torch.Generator().manual_seed(zlib.crc32(c.encode())))
                      for c in captions])


def tiny_trainer(folder: Path, out: Path, **settings):
    """A trainer of the tiny model (TAESD VAE, `encode_text`) on a training folder."""
    from ezigen_lib.training.data import FolderDataset
    from ezigen_lib.training.trainer import Trainer, TrainSettings

    settings.setdefault("head_dim", 32)
    settings.setdefault("subject_dropout", 0.0)
    return Trainer(tiny_model(seed=7), tiny_vae(), encode_text, FolderDataset(folder, 64), out,
                   TrainSettings(**settings))


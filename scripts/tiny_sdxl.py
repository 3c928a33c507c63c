"""A reduced-width SDXL that ComfyUI treats as SDXL: its UNet is `comfy.model_base.SDXL` under a
`comfy.supported_models.SDXL` config (so the family reads "SDXL" and the model takes SDXL's added conditioning),
its CLIP is ComfyUI's own two-tower `SDXLClipModel` (clip_l + clip_g) inside a `comfy.sd.CLIP`, narrowed through
the `clip_l_model_config` / `clip_g_model_config` model options every supported core reads. Random weights.
"""
from __future__ import annotations

import types
import zlib
from pathlib import Path

import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models

from tiny_models import TINY_CHANNELS, _unet_config, init_random, tiny_vae

CLIP_L_WIDTH, CLIP_G_WIDTH = 32, 48
CONTEXT_WIDTH = CLIP_L_WIDTH + CLIP_G_WIDTH  # SDXL concatenates clip_l's and clip_g's states (768 + 1280)
SIZE_IDS_WIDTH = 6 * 256  # SDXL's six size ids, 256 Fourier features each
DEPTHS = (2, 3)  # SDXL: 2 and 10


def _tower(width: int, layers: int, act: str) -> dict:
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 2, "num_hidden_layers": layers,
            "hidden_act": act}


def tiny_sdxl(seed: int = 0, depths: tuple[int, int] = DEPTHS):
    """A MODEL of SDXL's layout in miniature (see tiny_models.tiny_sdxl_like), as ComfyUI's SDXL classes."""
    config = _unet_config(CONTEXT_WIDTH, TINY_CHANNELS)
    config.update(transformer_depth=[0, 0, depths[0], depths[0], depths[1], depths[1]],
                  transformer_depth_output=[0, 0, 0, depths[0], depths[0], depths[0], depths[1], depths[1], depths[1]],
                  channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2], transformer_depth_middle=depths[1],
                  num_classes="sequential", adm_in_channels=CLIP_G_WIDTH + SIZE_IDS_WIDTH)
    model_config = comfy.supported_models.SDXL(config)
    model_config.unet_config["num_head_channels"] = 32
    base = comfy.model_base.SDXL(model_config, device="cpu")
    init_random(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_sdxl_clip(seed: int = 4):
    """A CLIP of ComfyUI's SDXL class with towers 32 (clip_l, quick_gelu) and 48 (clip_g, gelu) wide, 3 layers."""
    target = types.SimpleNamespace(params={}, clip=comfy.sdxl_clip.SDXLClipModel,
                                   tokenizer=comfy.sdxl_clip.SDXLTokenizer)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": _tower(CLIP_L_WIDTH, 3, "quick_gelu"),
                                                "clip_g_model_config": _tower(CLIP_G_WIDTH, 3, "gelu"),
                                                "dtype": torch.float32})
    init_random(clip.cond_stage_model, seed, std=0.1)
    return clip


def sdxl_unet_config(model_channels: int = 320, context_dim: int = 2048, pooled_dim: int = 1280) -> dict:
    """ComfyUI's SDXL unet_config (comfy.supported_models.SDXL's, plus what model detection reads off an
    SDXL-base checkpoint) at the given widths; the defaults are SDXL-base's own."""
    return {**comfy.supported_models.SDXL.unet_config,
            "model_channels": model_channels, "context_dim": context_dim,
            "adm_in_channels": pooled_dim + SIZE_IDS_WIDTH,
            # what comfy.model_detection.detect_unet_config adds for an SDXL-base state dict
            "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
            "num_classes": "sequential", "in_channels": 4, "out_channels": 4, "num_res_blocks": [2, 2, 2],
            "channel_mult": [1, 2, 4], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
            "transformer_depth_middle": 10, "use_temporal_resblock": False}


def sdxl_70(seed: int = 0, model_channels: int = 32, context_dim: int = CONTEXT_WIDTH,
            pooled_dim: int = CLIP_G_WIDTH, device: str = "cpu"):
    """ComfyUI's SDXL with SDXL-base's whole layout (all 70 transformer layers, SDXL's 64-wide heads) at reduced
    widths; its text widths fit tiny_sdxl_clip. `device="meta"` builds it without memory (no weights), e.g. at
    SDXL-base's full widths."""
    config = comfy.supported_models.SDXL(sdxl_unet_config(model_channels, context_dim, pooled_dim))
    config.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.SDXL(config, model_type=comfy.model_base.ModelType.EPS, device=device)
    if device != "meta":
        init_random(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def encode_text_pooled(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random (context, pooled) per caption at the tiny SDXL's text widths, as SDXL's CLIP gives both."""
    seeded = [torch.Generator().manual_seed(zlib.crc32(c.encode()) + 1) for c in captions]
    context = torch.cat([torch.randn(1, 7, CONTEXT_WIDTH, generator=g) for g in seeded])
    pooled = torch.cat([torch.randn(1, CLIP_G_WIDTH, generator=g) for g in seeded])
    return context, pooled


def tiny_sdxl_trainer(folder: Path, out: Path, **settings):
    """A trainer of the tiny SDXL (depths 2 and 2: 22 layers; TAESD VAE, `encode_text_pooled`) on a training
    folder."""
    from ezigen_lib.training.data import FolderDataset
    from ezigen_lib.training.trainer import Trainer, TrainSettings

    settings.setdefault("head_dim", 32)
    settings.setdefault("subject_dropout", 0.0)
    return Trainer(tiny_sdxl(seed=7, depths=(2, 2)), tiny_vae(), encode_text_pooled, FolderDataset(folder, 64), out,
                   TrainSettings(**settings))

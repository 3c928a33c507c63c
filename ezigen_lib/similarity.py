"""Similarity between consecutive rounds, for the autostop.

The reference compares OpenAI CLIP ViT-B/32 image embeddings (cosine; 0.99 threshold). Any ComfyUI
CLIP_VISION works; ViT-B/32 itself loads through `load_clip_vision` with the config shipped here.
Without a CLIP vision model the fallback compares the latents (a proxy: its scale differs).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import EZIGenError, public_error

VIT_B32_CONFIG = Path(__file__).with_name("clip_vision_vit_b32.json")
_VIT_B32_MARKER = "vision_model.encoder.layers.11.layer_norm1.weight"
_VIT_B32_TOO_DEEP = "vision_model.encoder.layers.12.layer_norm1.weight"
_OPEN_CLIP_MARKER = "visual.transformer.resblocks.0.attn.in_proj_weight"


@public_error
class ClipVisionFileError(EZIGenError, ValueError):
    pass


def load_clip_vision(path: str | os.PathLike, shown: str | None = None):
    """Load a CLIP vision model with ComfyUI's machinery, ViT-B/32 (12 layers) included.

    `shown` is how messages name the file ('models/clip_vision/NAME' from the node; never the server's
    absolute path); by default the path as given.
    """
    import comfy.clip_vision
    import comfy.utils

    from .errors import exception_text

    shown = shown or str(path)
    where = ("Put an image encoder in ComfyUI/models/clip_vision: OpenAI CLIP ViT-B/32 as the reference uses "
             "(the vision part of openai/clip-vit-base-patch32 in safetensors) or any CLIP vision model ComfyUI "
             "loads, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    try:
        sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    except pickle.UnpicklingError as exc:
        raise ClipVisionFileError(f"CLIP vision file '{shown}' is a pickle that holds more than plain tensors; it "
                                  f"was refused without running it. {where}.") from exc
    except Exception as exc:
        raise ClipVisionFileError(f"CLIP vision file '{shown}' could not be read ({exception_text(exc, path, shown)})."
                                  f" {where}.") from exc
    if not isinstance(sd, dict):
        raise ClipVisionFileError(f"CLIP vision file '{shown}' holds a {type(sd).__name__}, not weights. {where}.")
    if _OPEN_CLIP_MARKER in sd:
        sd = comfy.clip_vision.convert_to_transformers(sd, "visual.")
    if _VIT_B32_MARKER in sd and _VIT_B32_TOO_DEEP not in sd:
        model = comfy.clip_vision.ClipVisionModel(str(VIT_B32_CONFIG))
        missing, _ = model.load_sd(sd)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing:
            raise ClipVisionFileError(f"CLIP vision file '{shown}' looks like ViT-B/32 but lacks {len(missing)} "
                                      f"tensors (e.g. {missing[0]}). {where}.")
        return model
    model = comfy.clip_vision.load_clipvision_from_sd(sd)
    if model is None:
        raise ClipVisionFileError(f"'{shown}' is not a CLIP vision model ComfyUI recognises. {where}.")
    return model


def clip_embeddings(clip_vision, images: torch.Tensor) -> torch.Tensor:
    """(B,H,W,C) images -> (B,D) embeddings, center-cropped as the reference's CLIP preprocessing."""
    return clip_vision.encode_image(images[..., :3], crop=True).image_embeds.float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity of two batches (any shape after the batch dim)."""
    return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=-1)

"""Prompts to text features with a ComfyUI CLIP, in either of the two layer choices EZIGen meets.

"comfy": what ComfyUI's CLIPTextEncode gives for the checkpoint (SD1.x its last layer, SD2.x its penultimate
layer after the final LayerNorm, SDXL the penultimate layers of CLIP-L and bigG without it, or whatever a
CLIPSetLastLayer on `clip` asks for).
"final": every text tower's final layer after its final LayerNorm (Hugging Face's ``last_hidden_state``), as
upstream's SDXL trainer and subject pass encode text (CLIP-L ⊕ bigG, 77 x 2048).
The pooled output is ComfyUI's either way (SDXL: bigG's projected pooled embedding).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LAYERS = ("comfy", "final")


class _FinalLayers:
    """A CLIP's text model with every option passed on except the layer, which is always each tower's final
    output after its final LayerNorm (sd1_clip's "last", chosen by layer None). Needed on every call: from
    ComfyUI 0.8.0 on, CLIP.encode_from_tokens sets the execution device after the layer, and that call puts a
    tower back to its default hidden layer (SDXL's -2), so a layer chosen once does not hold."""

    def __init__(self, model):
        self.model = model

    def reset_clip_options(self):
        self.model.reset_clip_options()
        self.model.set_clip_options({"layer": None})

    def set_clip_options(self, options):
        self.model.set_clip_options({**options, "layer": None})

    def __getattr__(self, name):
        return getattr(self.model, name)


def encode_prompts(clip, texts: list[str], layers: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context (N, T, D), pooled (N, P) or None where the CLIP gives none) of `texts`, one row each, each
    encoded on its own as CLIPTextEncode would encode it."""
    import torch  # noqa: PLC0415 - this module's names are read before the trainer bootstraps ComfyUI

    if layers not in LAYERS:
        raise ValueError(f"text layers must be one of {LAYERS}, not {layers!r}")
    if layers == "final":
        clip = clip.clone()  # the caller's CLIP keeps its own layer choice
        clip.cond_stage_model = _FinalLayers(clip.cond_stage_model)
    contexts, pooled = [], []
    for text in texts:
        context, pooled_row = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        contexts.append(context)
        pooled.append(pooled_row)
    has_pooled = all(p is not None for p in pooled)
    return torch.cat(contexts), torch.cat(pooled) if has_pooled else None

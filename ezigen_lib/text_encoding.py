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
# sd1_clip.SDClipModel.set_clip_options maps a layer index deeper than the tower to its "last" output: the final
# layer after the final LayerNorm (the same rule in ComfyUI 0.3.75, 0.8.0 and 0.28.2)
_PAST_EVERY_TOWER = -(1 << 20)


def encode_prompts(clip, texts: list[str], layers: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context (N, T, D), pooled (N, P) or None where the CLIP gives none) of `texts`, one row each, each
    encoded on its own as CLIPTextEncode would encode it."""
    import torch  # noqa: PLC0415 - this module's names are read before the trainer bootstraps ComfyUI

    if layers not in LAYERS:
        raise ValueError(f"text layers must be one of {LAYERS}, not {layers!r}")
    if layers == "final":
        clip = clip.clone()  # the caller's CLIP keeps its own layer setting
        clip.clip_layer(_PAST_EVERY_TOWER)
    contexts, pooled = [], []
    for text in texts:
        context, pooled_row = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        contexts.append(context)
        pooled.append(pooled_row)
    has_pooled = all(p is not None for p in pooled)
    return torch.cat(contexts), torch.cat(pooled) if has_pooled else None

"""Prompt encoding for the subject pass: ComfyUI's usual text encoding, or upstream's SDXL encoder-pass one.

Upstream's SDXL subject pass (and its trainer) feed the UNet the *final* layer of both text towers after their
final LayerNorm (CLIP-L's and bigG's ``last_hidden_state``, concatenated) and bigG's projected pooled output,
where ComfyUI's SDXL CLIPTextEncode gives the penultimate layers without that LayerNorm (sdxl_clip.py:
``layer="hidden", layer_idx=-2, layer_norm_hidden_state=False`` in 0.3.75, 0.8.0 and 0.28.2). ComfyUI's clip
options read any layer index beyond a tower's depth as its ``"last"`` output, which is the final layer after
the final LayerNorm (sd1_clip.SDClipModel.set_clip_options and forward, same three hosts), so "final" is a
`clip_layer` setting on a clone of the CLIP and nothing here runs a text model by hand.
"""
from __future__ import annotations

import torch

LAYERS = ("comfy", "final")  # ComfyUI's usual encoding; every tower's final layer after its final LayerNorm
BEYOND_EVERY_TOWER = -1_000_000  # a clip_layer index deeper than any text tower: ComfyUI then takes "last"


def encode_prompts(clip, texts: list[str], layers: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context (B, tokens, width), pooled (B, width) or None where the CLIP gives none) of `texts` with
    ComfyUI's CLIP object `clip` (never changed). `layers`: "comfy" = what CLIPTextEncode gives; "final" =
    upstream's encoder pass: the final layer after LayerNorm of every tower, the first 77 tokens of each prompt
    (upstream's tokenizers truncate there)."""
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(LAYERS)}, not {layers!r}")
    if not texts:
        raise ValueError("encode_prompts needs at least one prompt")
    if layers == "final":
        clip = clip.clone()
        clip.clip_layer(BEYOND_EVERY_TOWER)
    contexts, pooled = [], []
    for text in texts:
        tokens = clip.tokenize(text)
        if layers == "final":  # one 77-token chunk per tower, as upstream's truncating tokenizers
            tokens = {name: chunks[:1] for name, chunks in tokens.items()}
        context, pool = clip.encode_from_tokens(tokens, return_pooled=True)
        contexts.append(context)
        pooled.append(pool)
    lengths = sorted({c.shape[1] for c in contexts})
    if len(lengths) > 1:
        raise ValueError(f"The prompts encode to different lengths ({lengths} tokens; ComfyUI adds 77 tokens per 75 "
                         "words' worth): shorten the longer prompts to one chunk, or use layers='final', which keeps "
                         "the first 77 tokens of each.")
    pooled_rows = None if any(p is None for p in pooled) else torch.cat(pooled)
    return torch.cat(contexts), pooled_rows

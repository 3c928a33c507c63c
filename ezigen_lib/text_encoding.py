"""Prompt encoding for the subject pass: ComfyUI's usual text encoding, or upstream's SDXL encoder-pass one.

Upstream's SDXL subject pass (and its trainer) feed the UNet the *final* layer of both text towers after their
final LayerNorm (CLIP-L's and bigG's ``last_hidden_state``, concatenated) and bigG's projected pooled output,
where ComfyUI's SDXL CLIPTextEncode gives the penultimate layers without that LayerNorm (sdxl_clip.py:
``layer="hidden", layer_idx=-2, layer_norm_hidden_state=False`` in 0.3.75, 0.8.0 and 0.28.2).

"final" asks a clone of the CLIP for the last layer (``clip_layer(-1)``) and has each tower apply its own final
LayerNorm to it for that one call. The CLIP API offers no switch for the LayerNorm: a layer index beyond a
tower's depth means "last" (after LayerNorm) in 0.3.75, but from 0.8.0 on, encode_from_tokens sets the
execution device through the same clip options right after, which puts the tower back on its default layer.
So the towers' ``layer_norm_hidden_state`` (read at each forward by sd1_clip.SDClipModel on all three hosts)
is switched on around the call and restored after.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LAYERS = ("comfy", "final")  # ComfyUI's usual encoding; every tower's final layer after its final LayerNorm
LAST_LAYER = -1


@contextlib.contextmanager
def _final_layer_norm(clip) -> Iterator[None]:
    """Every text tower of `clip` applies its final LayerNorm to the layer it returns, for the duration."""
    import comfy.sd1_clip  # noqa: PLC0415 - ComfyUI only where a CLIP is encoded

    towers = [m for m in clip.cond_stage_model.modules() if isinstance(m, comfy.sd1_clip.SDClipModel)]
    before = [tower.layer_norm_hidden_state for tower in towers]
    try:
        for tower in towers:
            tower.layer_norm_hidden_state = True
        yield
    finally:
        for tower, value in zip(towers, before):
            tower.layer_norm_hidden_state = value


def encode_prompts(clip, texts: list[str], layers: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context (B, tokens, width), pooled (B, width) or None where the CLIP gives none) of `texts` with
    ComfyUI's CLIP object `clip` (never changed). `layers`: "comfy" = what CLIPTextEncode gives; "final" =
    upstream's encoder pass: the final layer after LayerNorm of every tower, the first 77 tokens of each prompt
    (upstream's tokenizers truncate there)."""
    import torch  # noqa: PLC0415 - train.py reads LAYERS before it bootstraps ComfyUI (and torch)

    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(LAYERS)}, not {layers!r}")
    if not texts:
        raise ValueError("encode_prompts needs at least one prompt")
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: some tokenizers crash on it with a TypeError
            raise ValueError(f"The subject prompt text has a character that is not valid Unicode at position "
                             f"{exc.start} (a lone surrogate, {text[exc.start]!r}): retype or paste the text "
                             "again.") from None
    final = layers == "final"
    if final:
        clip = clip.clone()
        clip.clip_layer(LAST_LAYER)
    contexts, pooled = [], []
    for text in texts:
        tokens = clip.tokenize(text)
        if final:  # one 77-token chunk per tower, as upstream's truncating tokenizers
            tokens = {name: chunks[:1] for name, chunks in tokens.items()}
        with _final_layer_norm(clip) if final else contextlib.nullcontext():
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

"""EZIGen Edit's inversion prompt: the reference's "exceptional" text, every token id 7788 with no position
embeddings, through the checkpoint's own text towers, and the CONDITIONING the inversion runs with.

SDXL (the pack's choice): the same exceptional prompt through both text towers with clip_g's pooled embedding,
as upstream's "better inversion" SDXL experiment; upstream's main SDXL script inverts with the prompt "" and
DDIM instead (docs/method.md section 11).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.model_management

from .family import UnsupportedModelError, model_family_name

EXCEPTIONAL_TOKEN_ID = 7788


def text_towers(clip) -> list:
    """The text encoders of a CLIP whose states make the UNet's context, in concatenation order: SD1.x's
    clip_l or SD2.x's clip_h alone, SDXL's clip_l then clip_g (its context is their states side by side, its
    pooled embedding clip_g's). Any other text encoder (FLUX's T5, SD3's three) is refused by name."""
    wrapper = clip.cond_stage_model
    if isinstance(getattr(wrapper, "clip", None), str):  # SD1ClipModel names its one tower
        return [getattr(wrapper, wrapper.clip)]
    towers = [getattr(wrapper, name, None) for name in ("clip_l", "clip_g")]
    if all(towers) and not hasattr(wrapper, "t5xxl"):
        return towers
    raise UnsupportedModelError(
        f"EZIGen Edit's inversion prompt needs the CLIP of an SD1.x, SD2.x or SDXL checkpoint (one CLIP text "
        f"encoder, or SDXL's clip_l and clip_g); the connected CLIP is a {type(wrapper).__name__}: connect the CLIP "
        "output of the MODEL's own checkpoint loader.")


def text_encoder_device(clip) -> torch.device:
    """Where ComfyUI runs this CLIP's text encoder.

    Newer cores may keep the text encoder's weights off the GPU and cast them on the fly, telling
    the encoder the compute device through its ``execution_device`` option (set from the CLIP
    patcher's load device). The device of the embedding weights is only the last resort (old cores
    without either, where weights always sit on the compute device).
    """
    encoder = text_towers(clip)[0]
    device = getattr(encoder, "execution_device", None)
    if device is None:
        device = getattr(getattr(clip, "patcher", None), "load_device", None)
    if device is None:
        device = encoder.transformer.text_model.embeddings.token_embedding.weight.device
    return torch.device(device)


@dataclass(frozen=True)
class InversionText:
    """The inversion prompt: its (1, 77, D) text context, and the pooled embedding a UNet with added
    conditioning takes with it (SDXL's y; None where the CLIP gives none)."""
    context: torch.Tensor
    pooled: torch.Tensor | None = None


def _exceptional_tower(encoder, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One tower's (hidden states at its configured layer, pooled embedding as it returns it) for token 7788
    at all 77 places with the positions cancelled."""
    embeddings = encoder.transformer.text_model.embeddings
    token = embeddings.token_embedding.weight[EXCEPTIONAL_TOKEN_ID].float()
    positions = embeddings.position_embedding.weight.float()
    embeds = (token.to(device)[None] - positions.to(device))[None]
    hidden = encoder.layer == "hidden"
    outputs = encoder.transformer(None, None, embeds=embeds, num_tokens=[embeds.shape[1]],
                                  intermediate_output=encoder.layer_idx if hidden else None,
                                  final_layer_norm_intermediate=encoder.layer_norm_hidden_state, dtype=torch.float32)
    context = outputs[1] if hidden else outputs[0]
    pooled = outputs[3] if not encoder.return_projected_pooled and len(outputs) >= 4 else outputs[2]
    return context, pooled


def exceptional_text(clip) -> InversionText:
    """The exceptional prompt: token 7788 everywhere, positions cancelled, through every text tower.

    ComfyUI's text model adds position embeddings to given embeddings, so we give
    E_tok[7788] - E_pos and the sum is the bare token embedding, as in the reference (SD2.1's
    ExceptionCLIP). Each tower gives its states at the layer the checkpoint's CLIP is set to (SD2.x:
    penultimate + final LN; SDXL: penultimate without, both towers, as upstream's "better inversion"
    SDXL experiment ran ExceptionCLIP through SDXL's stock prompt encoding); SDXL's context is the towers'
    states side by side and its pooled embedding clip_g's projected final-LN state at the last place (ComfyUI's
    pooling of given embeddings: the prompt has no end token). It runs on :func:`text_encoder_device`, like the
    core's own prompt encoding.
    """
    clip.load_model()
    towers = text_towers(clip)
    device = text_encoder_device(clip)
    outputs = [_exceptional_tower(encoder, device) for encoder in towers]
    context = outputs[0][0] if len(outputs) == 1 else torch.cat([c for c, _ in outputs], dim=-1)
    pooled = outputs[-1][1]
    intermediate = comfy.model_management.intermediate_device()
    return InversionText(context.float().to(intermediate), None if pooled is None else pooled.float().to(intermediate))


def exceptional_prompt(clip) -> torch.Tensor:
    """The exceptional prompt's (1, 77, D) text context (see `exceptional_text`)."""
    return exceptional_text(clip).context


def inversion_conditioning(model, text: InversionText | torch.Tensor, size: tuple[int, int]) -> list:
    """The inversion's CONDITIONING for `model` at the work `size` (H, W) in pixels: the context alone for a
    UNet without added conditioning (SD1.x/SD2.x); for SDXL also the pooled embedding and the size ids its
    stock pipeline gives an image of that size (original = target = the work size, crop (0, 0))."""
    if isinstance(text, torch.Tensor):
        text = InversionText(text)
    if not getattr(model.model, "adm_channels", 0):
        return [[text.context, {}]]
    if text.pooled is None:
        raise UnsupportedModelError(
            f"The MODEL ({model_family_name(model)}) takes a pooled text embedding with its prompt, which the "
            "inversion prompt lacks: connect the CLIP of the MODEL's own checkpoint.")
    height, width = size
    return [[text.context, {"pooled_output": text.pooled, "width": width, "height": height, "crop_w": 0,
                            "crop_h": 0, "target_width": width, "target_height": height}]]

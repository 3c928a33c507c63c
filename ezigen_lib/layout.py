"""Which UNets EZIGen can serve: read the transformer layout off the live model."""
from __future__ import annotations

from dataclasses import dataclass

from comfy.ldm.modules.attention import SpatialTransformer

from .checks import public_error
from .slots import SLOT_COUNT


@public_error
class UnsupportedModelError(ValueError):
    """A MODEL whose UNet does not have EZIGen's 16 depth-1 transformer blocks."""


@dataclass(frozen=True)
class UNetLayout:
    family: str  # ComfyUI's model config name, e.g. SD15, SD20, SDXL, Flux
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    context_dim: int | None
    latent_channels: int | None


def model_family(model_patcher) -> str:
    base = model_patcher.model
    config = getattr(base, "model_config", None)
    return type(config).__name__ if config is not None else type(base).__name__


def unet_layout(model_patcher) -> UNetLayout:
    """Transformers in execution order (input, middle, output blocks), as the UNet runs them."""
    base = model_patcher.model
    family = model_family(model_patcher)
    unet = getattr(base, "diffusion_model", None)
    parts = [getattr(unet, name, None) for name in ("input_blocks", "middle_block", "output_blocks")]
    latent_format = getattr(base, "latent_format", None)
    latent_channels = getattr(latent_format, "latent_channels", None)
    if unet is None or any(p is None for p in parts):
        return UNetLayout(family, (), (), None, latent_channels)
    transformers = [m for part in parts for m in part.modules() if isinstance(m, SpatialTransformer)]
    widths = tuple(t.transformer_blocks[0].attn1.to_q.in_features for t in transformers)
    depths = tuple(len(t.transformer_blocks) for t in transformers)
    context_dim = None
    if transformers and transformers[0].transformer_blocks[0].attn2 is not None:
        context_dim = transformers[0].transformer_blocks[0].attn2.to_k.in_features
    return UNetLayout(family, widths, depths, context_dim, latent_channels)


def require_ezigen_layout(model_patcher, widths: tuple[int, ...], role: str) -> UNetLayout:
    """Fail clearly, before anything is patched, when `model_patcher` cannot host these adapters."""
    layout = unet_layout(model_patcher)
    if not layout.widths:
        raise UnsupportedModelError(
            f"The {role} is a {layout.family} model, which has no SD-style UNet. EZIGen works with SD1.x and "
            "SD2.x checkpoints (the released weights are for SD2.1-base); to edit a FLUX or other image, "
            "decode it to an IMAGE and use an SD2.1-base checkpoint for EZIGen.")
    if len(layout.widths) != SLOT_COUNT or any(d != 1 for d in layout.depths):
        raise UnsupportedModelError(
            f"The {role} is a {layout.family} model with {len(layout.widths)} transformer blocks of depths "
            f"{sorted(set(layout.depths))}; EZIGen adapters need an SD1.x/SD2.x UNet ({SLOT_COUNT} blocks of "
            "depth 1). SDXL and other layouts are not supported.")
    if layout.widths != tuple(widths):
        raise UnsupportedModelError(
            f"The {role} ({layout.family}) has transformer widths {sorted(set(layout.widths))} but the EZIGen "
            f"adapter was made for widths {sorted(set(widths))}; use an SD1.x/SD2.x checkpoint with the "
            "matching adapter.")
    return layout


def require_text_width(model_patcher, width: int, what: str, fix: str) -> None:
    """Refuse text embeddings of another width than the MODEL's cross-attention takes (e.g. SD1.5's
    768-wide CLIP with an SD2.1 MODEL), naming the input at fault instead of a matmul shape error."""
    layout = unet_layout(model_patcher)
    if layout.context_dim is not None and width != layout.context_dim:
        raise UnsupportedModelError(
            f"{what} is {width}-wide but the MODEL ({layout.family}) expects {layout.context_dim}-wide text "
            f"embeddings: {fix}")


def require_conditioning_width(model_patcher, conditioning, name: str) -> None:
    """Every entry of a CONDITIONING input must match the MODEL's text width."""
    for cond, _ in conditioning or []:
        require_text_width(model_patcher, cond.shape[-1], f"The {name} conditioning",
                           f"encode the {name} prompt with the CLIP of the MODEL's own checkpoint.")

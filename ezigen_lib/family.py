"""A UNet family as data, read off the live ComfyUI model: the one place that knows a model's shape.

EZIGen captures a feature from, and injects an adapter into, every transformer layer (ComfyUI's
``BasicTransformerBlock``) of the UNet. A `Family` lists those layers in the order a forward pass meets
them (input blocks, middle block, output blocks; inside a SpatialTransformer, layer 0 first). Layer k
is the reference's feature-list index k and ``learnable_weights[k]``. Each is addressed as ComfyUI
addresses it at run time in ``transformer_options``: ``block`` (name and id) and ``block_index`` (the
layer inside its SpatialTransformer), so a SpatialTransformer of several layers (SDXL's) is no special
case. Capture, injection, the adapter, the checkpoint and subject files and the trainer ask the family
and hold no layout of their own; a new family of openaimodel UNets needs no code here at all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import EZIGenError, public_error
from .core_details import core_changed, require_option

Address = tuple[str, int, int]  # (block name, block id, block_index), e.g. ("input", 4, 1)
RESIDUALS = ("double", "single")  # how an adapter's output joins its block: h1 + u + O, h1 + O
FAMILY_NAME = re.compile(r"[A-Za-z0-9_.+\-]{1,64}")  # a ComfyUI model config name as files record it


@public_error
class UnsupportedModelError(EZIGenError, ValueError):
    """A MODEL whose UNet cannot host the EZIGen adapter it is given."""


@dataclass(frozen=True)
class FamilyFacts:
    """What a family's name implies and its layers cannot show: the square side it was trained at (the
    subject's encoding size and the edit's work size), the adapter residual upstream trained it with, and
    the name users know its checkpoints by (for messages)."""
    native_resolution: int
    residual: str  # "double" (h1 + u + O, SD2.1's release) or "single" (h1 + O, upstream's SDXL run)
    label: str = "SD1.x/SD2.x"


DEFAULT_FACTS = FamilyFacts(native_resolution=512, residual="double")
FACTS = {  # keyed by ComfyUI's model config name; anything else is treated as an SD1.x/SD2.x-like UNet
    "SD15": DEFAULT_FACTS,
    "SD20": DEFAULT_FACTS,
    "SDXL": FamilyFacts(native_resolution=1024, residual="single", label="SDXL"),
}


def facts_of(name: str | None) -> FamilyFacts:
    """The facts of the family ComfyUI calls `name` (SD1.x/SD2.x-like defaults for any other)."""
    return FACTS.get(name, DEFAULT_FACTS)


def _layers_of(*attentions: tuple[str, int]) -> tuple[str, ...]:
    """Diffusers layer names from (attention prefix, layers in it) pairs, in run order."""
    return tuple(f"{prefix}.transformer_blocks.{j}" for prefix, depth in attentions for j in range(depth))


def _attentions(section: str, levels, per_level: int, depth: int) -> list[tuple[str, int]]:
    return [(f"{section}.{level}.attentions.{a}", depth) for level in levels for a in range(per_level)]


@dataclass(frozen=True)
class ReferenceLayout:
    """The layer layout of an upstream checkpoint (diffusers names, no metadata): what family and base it was
    trained for, or why it cannot run (`refused`)."""
    family: str
    base_model: str
    prefixes: tuple[str, ...]  # ".../transformer_blocks.j" of each adapter, in run order
    refused: str | None = None

    @property
    def residual(self) -> str:
        return facts_of(self.family).residual


_SDXL_UP = _attentions("up_blocks", (0,), 3, 10) + _attentions("up_blocks", (1,), 3, 2)
REFERENCE_LAYOUTS = (
    # SD2.1's release (SD1.x has the same 16 layers; the released weights are SD2.1-base's)
    ReferenceLayout("SD20", "sd2.1-base", _layers_of(*_attentions("down_blocks", range(3), 2, 1),
                                                     ("mid_block.attentions.0", 1),
                                                     *_attentions("up_blocks", (1, 2, 3), 3, 1))),
    # upstream's SDXL run: every layer of SDXL-base's 11 SpatialTransformers (ezigen-sdxl-flux.md A2/A3)
    ReferenceLayout("SDXL", "sdxl-base-1.0", _layers_of(*_attentions("down_blocks", (1,), 2, 2),
                                                        *_attentions("down_blocks", (2,), 2, 10),
                                                        ("mid_block.attentions.0", 10), *_SDXL_UP)),
    ReferenceLayout("SDXL", "sdxl-base-1.0", _layers_of(*_SDXL_UP), refused=(
        "it is upstream's SDXL `only_up` variant (adapters on the 36 up-block layers only). Upstream pairs those "
        "adapters with the first 36 subject features, which come from the down and middle blocks (some 640 wide "
        "for 1280-wide adapters), so that variant cannot run as trained; use a checkpoint of the full 70-layer "
        "SDXL run")),
)


def reference_layout(prefixes: list[str] | tuple[str, ...]) -> ReferenceLayout | None:
    """The known upstream layout whose layers are exactly `prefixes` (in run order); None for any other."""
    return next((layout for layout in REFERENCE_LAYOUTS if layout.prefixes == tuple(prefixes)), None)


@dataclass(frozen=True)
class Layer:
    """One transformer layer: where ComfyUI runs it, how wide it is, and its name in a reference checkpoint."""
    index: int  # k: execution order, the feature and learnable_weights entry
    address: Address
    transformer_index: int  # ComfyUI's running count of SpatialTransformers when the layer runs
    width: int  # channels of the tokens its self-attention sees
    heads: int  # the UNet's own self-attention heads (head size = width // heads)
    reference_prefix: str | None  # diffusers name, e.g. "down_blocks.0.attentions.0.transformer_blocks.0"

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class Family:
    """What EZIGen needs to know of one UNet: its layers and the few facts around them."""
    name: str  # ComfyUI's model config name, e.g. SD15, SD20, SDXL, Flux
    layers: tuple[Layer, ...]
    context_dim: int | None  # width of the text embeddings its cross-attention takes
    latent_channels: int | None
    _by_address: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_address", {layer.address: layer for layer in self.layers})

    @property
    def facts(self) -> FamilyFacts:
        return facts_of(self.name)

    @property
    def native_resolution(self) -> int:
        return self.facts.native_resolution

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(layer.width for layer in self.layers)

    @property
    def depths(self) -> tuple[int, ...]:
        """Layers per SpatialTransformer, in order."""
        counts: dict[int, int] = {}
        for layer in self.layers:
            counts[layer.transformer_index] = counts.get(layer.transformer_index, 0) + 1
        return tuple(counts.values())

    def describe(self) -> str:
        return f"{self.name}: {len(self.layers)} transformer layers of widths {sorted(set(self.widths))}"

    def layer_at(self, extra_options: dict, purpose: str) -> Layer:
        """The layer a block patch is running in, from ComfyUI's ``block`` and ``block_index``; a core that
        addresses blocks another way stops the run instead of pairing a feature with the wrong layer."""
        block = tuple(require_option(extra_options, "block", purpose))
        block_index = require_option(extra_options, "block_index", purpose)
        layer = self._by_address.get((block[0], block[1], int(block_index)))
        if layer is None:
            raise core_changed(f"block {block} layer {block_index} among the {len(self.layers)} transformer layers "
                               f"of the {self.name} UNet", purpose)
        running = extra_options.get("transformer_index")
        if running is not None and running != layer.transformer_index:
            raise core_changed(f"transformer_index {layer.transformer_index} at block {block} (ComfyUI gave "
                               f"transformer_index {running})", purpose)
        return layer


def _base_model(model):
    """The BaseModel of a MODEL (a ModelPatcher) or the BaseModel itself (the trainer's)."""
    return model.model if hasattr(model, "model_options") else model


def model_family_name(model) -> str:
    base = _base_model(model)
    config = getattr(base, "model_config", None)
    return type(config).__name__ if config is not None else type(base).__name__


def _reference_names(base) -> dict[str, str]:
    """ComfyUI's own key map of this UNet's config, ComfyUI name -> diffusers name (empty where it has none)."""
    import comfy.utils  # noqa: PLC0415 - ComfyUI only where a model is read

    config = getattr(getattr(base, "model_config", None), "unet_config", None) or {}
    try:
        return {ours: theirs for theirs, ours in comfy.utils.unet_to_diffusers(config).items()}
    except (KeyError, IndexError, TypeError):  # a config unet_to_diffusers cannot read: no reference names
        return {}


def _walk(unet):
    """(address, ComfyUI module name, SpatialTransformer count, layer module) of every transformer layer of an
    openaimodel UNet, in the order a forward pass runs them; nothing for a model without its three parts."""
    from comfy.ldm.modules.attention import SpatialTransformer  # noqa: PLC0415 - ComfyUI only where a model is read

    parts = [(part, getattr(unet, "middle_block" if part == "middle" else f"{part}_blocks", None))
             for part in ("input", "middle", "output")]
    if unet is None or any(blocks is None for _, blocks in parts):
        return
    transformers = 0
    for part, blocks in parts:
        for block_id, block in enumerate([blocks] if part == "middle" else blocks):
            path = "middle_block" if part == "middle" else f"{part}_blocks.{block_id}"
            for child, module in enumerate(block):
                if not isinstance(module, SpatialTransformer):
                    continue
                for j, layer in enumerate(module.transformer_blocks):
                    yield (part, 0 if part == "middle" else block_id, j), f"{path}.{child}.transformer_blocks.{j}", \
                        transformers, layer
                transformers += 1


def layer_modules(unet) -> list:
    """The transformer layers (ComfyUI's BasicTransformerBlock modules) of `unet`, layer k at index k: what the
    trainer initialises each adapter from."""
    return [layer for *_, layer in _walk(unet)]


def family_of(model) -> Family:
    """The family of a MODEL (or of a BaseModel), read from its live ``diffusion_model`` (no layers: not an
    openaimodel UNet)."""
    base = _base_model(model)
    unet = getattr(base, "diffusion_model", None)
    latent_channels = getattr(getattr(base, "latent_format", None), "latent_channels", None)
    names = _reference_names(base)
    layers = []
    for address, name, transformers, layer in _walk(unet):
        prefix = names.get(f"{name}.attn1.to_q.weight")
        layers.append(Layer(len(layers), address, transformers, layer.attn1.to_q.in_features, layer.attn1.heads,
                            prefix.rsplit(".attn1.", 1)[0] if prefix else None))
    context_dim = None
    if layers:
        first = next(layer for *_, layer in _walk(unet))
        context_dim = first.attn2.to_k.in_features if first.attn2 is not None else None
    return Family(model_family_name(base), tuple(layers), context_dim, latent_channels)


def require_adapter_fits(model_patcher, widths: tuple[int, ...], role: str,
                         adapter_family: str | None = None) -> Family:
    """The family of `model_patcher`, after refusing (before anything is patched) one whose transformer layers
    are not those the adapter of `widths` (made for `adapter_family`, None: unknown) was made for."""
    family = family_of(model_patcher)
    supported = " and ".join(dict.fromkeys(facts.label for facts in FACTS.values()))
    if not family.layers:
        raise UnsupportedModelError(
            f"The {role} is a {family.name} model, which has no SD-style UNet. EZIGen works with {supported} "
            "checkpoints (the released weights are for SD2.1-base); to edit a FLUX or other image, "
            "decode it to an IMAGE and use an SD2.1-base checkpoint for EZIGen.")
    adapter = (f"{adapter_family} ({len(widths)} transformer layers)" if adapter_family
               else f"a UNet of {len(widths)} transformer layers")
    fix = (f"use a {facts_of(adapter_family).label} checkpoint as the {role}, or an adapter made for "
           f"{facts_of(family.name).label}" if adapter_family else "use the checkpoint family the adapter was "
           "trained on")
    if len(family.layers) != len(widths):
        raise UnsupportedModelError(
            f"The EZIGen adapter is for {adapter} but the {role} is {family.name} ({len(family.layers)} transformer "
            f"layers in {len(family.depths)} blocks of depths {sorted(set(family.depths))}): {fix}.")
    if family.widths != tuple(widths):
        raise UnsupportedModelError(
            f"The {role} ({family.name}) has transformer widths {sorted(set(family.widths))} but the EZIGen "
            f"adapter ({adapter}) was made for widths {sorted(set(widths))}: {fix}.")
    return family


def require_text_width(model_patcher, width: int, what: str, fix: str) -> None:
    """Refuse text embeddings of another width than the MODEL's cross-attention takes (e.g. SD1.5's
    768-wide CLIP with an SD2.1 MODEL), naming the input at fault instead of a matmul shape error."""
    family = family_of(model_patcher)
    if family.context_dim is not None and width != family.context_dim:
        raise UnsupportedModelError(
            f"{what} is {width}-wide but the MODEL ({family.name}) expects {family.context_dim}-wide text "
            f"embeddings: {fix}")


def require_conditioning_width(model_patcher, conditioning, name: str) -> None:
    """Every entry of a CONDITIONING input must match the MODEL's text width."""
    for cond, _ in conditioning or []:
        require_text_width(model_patcher, cond.shape[-1], f"The {name} conditioning",
                           f"encode the {name} prompt with the CLIP of the MODEL's own checkpoint.")

"""The 16 transformer-block slots that EZIGen captures from and injects into.

SD1.x and SD2.x UNets share one layout: 16 SpatialTransformers of depth 1, met in this order
during a forward pass (input blocks, middle block, output blocks). Slot k is ComfyUI's runtime
``transformer_index`` k, the reference's feature-list index k and ``learnable_weights[k]``.
"""
from __future__ import annotations

from dataclasses import dataclass

SLOT_COUNT = 16


@dataclass(frozen=True)
class Slot:
    index: int
    diffusers_prefix: str  # reference checkpoint prefix, before ".transformer_blocks.0."
    comfy_block: tuple[str, int]  # ComfyUI's transformer_options["block"]
    width_mult: int  # channel width = model_channels * width_mult


def _build() -> tuple[Slot, ...]:
    rows: list[tuple[str, tuple[str, int], int]] = []
    comfy_input_ids = iter((1, 2, 4, 5, 7, 8))
    for level, mult in enumerate((1, 2, 4)):
        for j in range(2):
            rows.append((f"down_blocks.{level}.attentions.{j}", ("input", next(comfy_input_ids)), mult))
    rows.append(("mid_block.attentions.0", ("middle", 0), 4))
    comfy_output_ids = iter(range(3, 12))
    for level, mult in zip((1, 2, 3), (4, 2, 1)):
        for j in range(3):
            rows.append((f"up_blocks.{level}.attentions.{j}", ("output", next(comfy_output_ids)), mult))
    return tuple(Slot(k, prefix, block, mult) for k, (prefix, block, mult) in enumerate(rows))


SLOTS: tuple[Slot, ...] = _build()


def slot_widths(model_channels: int) -> list[int]:
    """Channel width of each slot for a UNet whose first level has `model_channels` channels."""
    return [model_channels * s.width_mult for s in SLOTS]


SD_WIDTHS = slot_widths(320)

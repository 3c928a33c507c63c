"""Write reference_checkpoint_keys.json: the 113 EZIGen tensors of the official SD2.1-base checkpoint.

The released checkpoint (an accelerate folder holding ``model.safetensors``) is the state dict of the
reference's main UNet: the frozen SD2.1-base weights plus what EZIGen registers onto it. This script
restates, from the reference code, what is registered and how it is named and shaped, and writes
that as data. It deliberately imports nothing from ``ezigen_lib``: the tests compare the pack's own key
mapping (``ezigen_lib.slots.SLOTS``, ``ezigen_lib.checkpoint.reference_key``) with this independent list.

Derived from github.com/ZichengDuan/EZIGen (Apache-2.0), read at commit 24738c2 (line numbers counted
there, except those marked 8a5137d; the function names are what matters). docs/method.md sections 2, 4
and 5 state the same facts:

1. Which UNet blocks carry transformers, and their widths.
   ``models/main_unet/unet_main.py``, ``UNet2DConditionModel_main.__init__`` (class at L69, block
   arguments L81-99): down blocks CrossAttnDownBlock2D x3 then DownBlock2D, mid block
   UNetMidBlock2DCrossAttn, up blocks UpBlock2D then CrossAttnUpBlock2D x3, block_out_channels
   (320, 640, 1280, 1280), layers_per_block 2, transformer_layers_per_block 1. Up blocks are built with
   ``layers_per_block + 1`` layers and the reversed channel list. The SD2.1-base ``unet/config.json``
   on Hugging Face (outside the repository) uses these same values. A diffusers cross-attention block keeps
   its Transformer2DModels in ``.attentions`` and each of those its BasicTransformerBlocks in
   ``.transformer_blocks``; with depth 1 there is only ``transformer_blocks.0``.
2. What is registered onto each of them.
   ``infer.py:register_adapter_and_configs`` (at 8a5137d: L353-393) and the same-named function of
   ``train.py`` (at 8a5137d: L468-514, called from ``load_models_and_learnable_params`` L441-465, after
   the whole main UNet was frozen, so these are the only trainable tensors): for every block of
   ``down_blocks + [mid_block] + up_blocks`` with ``has_cross_attention``, for every ``attentions[j]``,
   ``transformer_blocks[0].adapter = Attention_Adapter(query_dim=C, heads=attn1.heads,
   dim_head=attn1.dim_head, bias=attn1.use_bias (False for SD2.1), out_bias=attn1.out_bias (True),
   cross_attention_dim=None)`` and ``transformer_blocks[0].adapter_norm = nn.LayerNorm(C,
   elementwise_affine=True)``. Then ``main_unet.learnable_weights = nn.Parameter(torch.ones(16))``.
3. The adapter's own parameters.
   ``models/main_unet/adapter.py:Attention_Adapter.__init__`` (class L31; to_q L137, to_k/to_v
   L141-142, to_out L155-157): ``to_q``, ``to_k``, ``to_v`` are Linear(C -> heads * dim_head) without bias
   (``cross_attention_dim`` None means the keys and values also read width C); ``to_out`` is a ModuleList
   of Linear(heads * dim_head -> C, with bias) and a Dropout, which has no parameters. With gated=False
   and train_independent_kv=False (their defaults, never changed by the registration) nothing else is
   created; ``AttnProcessor2_0_Adapter`` is a plain class, not a module, so it adds no tensors. In a
   Transformer2DModel heads * dim_head equals the block width C, so all four matrices are C x C
   (torch Linear weights are stored as (out_features, in_features)).
4. No ``module.`` prefix: the README's release was trained on one GPU; the
   loader is tested with and without it.

Run ``python tests/data/make_reference_keys.py`` to rewrite the JSON next to this file,
or with ``--check`` to exit 1 when the committed JSON differs from what this script derives.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("reference_checkpoint_keys.json")

# SD2.1-base's diffusers UNet, as (block type, output width) per position; see point 1 above.
DOWN_BLOCKS: list[tuple[str, int]] = [("CrossAttnDownBlock2D", 320), ("CrossAttnDownBlock2D", 640),
                                      ("CrossAttnDownBlock2D", 1280), ("DownBlock2D", 1280)]
MID_BLOCK: tuple[str, int] = ("UNetMidBlock2DCrossAttn", 1280)
UP_BLOCKS: list[tuple[str, int]] = [("UpBlock2D", 1280), ("CrossAttnUpBlock2D", 1280),
                                    ("CrossAttnUpBlock2D", 640), ("CrossAttnUpBlock2D", 320)]
LAYERS_PER_BLOCK = 2  # down blocks: 2 resnet/attention pairs; up blocks: LAYERS_PER_BLOCK + 1
MID_ATTENTIONS = 1
HAS_CROSS_ATTENTION = {"CrossAttnDownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D"}
SLOT_COUNT = 16  # the length of learnable_weights, torch.ones(16) in the registration


def adapter_tensors(width: int) -> dict[str, list[int]]:
    """The tensors one registration adds to a transformer block of width `width` (points 2 and 3)."""
    square = [width, width]
    return {
        "adapter.to_q.weight": square,
        "adapter.to_k.weight": square,
        "adapter.to_v.weight": square,
        "adapter.to_out.0.weight": square,
        "adapter.to_out.0.bias": [width],
        "adapter_norm.weight": [width],
        "adapter_norm.bias": [width],
    }


def transformer_blocks() -> list[tuple[str, int]]:
    """(module path of the Transformer2DModel, width) in the registration's order: down, mid, up.

    This is also the order of the subject-feature list and of learnable_weights' entries, since the
    features are produced and consumed in the UNet's execution order (docs/method.md section 2).
    """
    found: list[tuple[str, int]] = []
    for i, (kind, width) in enumerate(DOWN_BLOCKS):
        if kind in HAS_CROSS_ATTENTION:
            found += [(f"down_blocks.{i}.attentions.{j}", width) for j in range(LAYERS_PER_BLOCK)]
    kind, width = MID_BLOCK
    if kind in HAS_CROSS_ATTENTION:
        found += [(f"mid_block.attentions.{j}", width) for j in range(MID_ATTENTIONS)]
    for i, (kind, width) in enumerate(UP_BLOCKS):
        if kind in HAS_CROSS_ATTENTION:
            found += [(f"up_blocks.{i}.attentions.{j}", width) for j in range(LAYERS_PER_BLOCK + 1)]
    return found


def derive() -> dict:
    blocks = transformer_blocks()
    if len(blocks) != SLOT_COUNT:
        raise AssertionError(f"{len(blocks)} transformer blocks, but learnable_weights has {SLOT_COUNT} entries")
    tensors: dict[str, list[int]] = {}
    for prefix, width in blocks:
        for name, shape in adapter_tensors(width).items():
            tensors[f"{prefix}.transformer_blocks.0.{name}"] = shape
    tensors["learnable_weights"] = [SLOT_COUNT]
    return {
        "about": "The EZIGen tensors of the official SD2.1-base checkpoint (model.safetensors of the "
                 "accelerate folder), name -> shape; every other key of that file is a frozen SD2.1-base "
                 "UNet weight. Written by tests/data/make_reference_keys.py, whose docstring says which "
                 "reference files and lines it was derived from; do not edit by hand.",
        "derived_from": [
            "github.com/ZichengDuan/EZIGen@24738c2 models/main_unet/unet_main.py "
            "UNet2DConditionModel_main.__init__ L69-99 (block types, widths, layers per block)",
            "github.com/ZichengDuan/EZIGen@24738c2 infer.py register_adapter_and_configs "
            "(at 8a5137d: L353-393) and train.py register_adapter_and_configs (at 8a5137d: L468-514, "
            "called by load_models_and_learnable_params L441-465): adapter, adapter_norm, learnable_weights",
            "github.com/ZichengDuan/EZIGen@24738c2 models/main_unet/adapter.py Attention_Adapter.__init__ "
            "L31, L137-157 (to_q, to_k, to_v, to_out.0; no other parameters)",
            "docs/method.md sections 2, 4 and 5",
        ],
        "base_model": "stabilityai/stable-diffusion-2-1-base",
        "slot_order": [prefix for prefix, _ in blocks],
        "tensors": tensors,
    }


def render() -> str:
    """The JSON text: indented, with each tensor's name and shape on one line (easy to read and diff)."""
    data = derive()
    tensors = data.pop("tensors")
    head = json.dumps(data, indent=1)[:-2]  # drop the closing "\n}"
    rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(shape)}" for name, shape in tensors.items())
    return f'{head},\n "tensors": {{\n{rows}\n }}\n}}\n'


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'differs from what the reference code gives'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(derive()['tensors'])} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

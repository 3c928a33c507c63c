"""The model family is read off the live UNet, and capture and injection work on any layout it describes.

The SDXL-shaped UNet is ComfyUI's own UNetModel with SDXL's arrangement in miniature: no transformers at the
first level, SpatialTransformers of 2 and of 3 layers below (SDXL: 2 and 10), the middle block as deep as the
deepest level. Nothing outside ezigen_lib/family.py knows that shape: the adapter is made for the widths the
family lists, and the subject and its injection follow.
"""
import pytest
import torch

from ezigen_lib.capture import encode_subject
from ezigen_lib.checkpoint import AdapterInfo, REFERENCE_TENSOR_NAMES, load_adapter, reference_key, reference_layers
from ezigen_lib.encoder import EZIGenEncoder, adapter_patcher
from ezigen_lib.family import family_of
from ezigen_lib.inject import apply_subject
from ezigen_lib.subject_kv import SubjectKV
from safetensors.torch import save_file

from tiny_models import (SD_BLOCKS, SD_REFERENCE_PREFIXES, random_adapter_state, random_context, sample,
                         slot_widths, tiny_model, tiny_sdxl_like, tiny_vae)

DEPTHS = (2, 3)
# (block, block_index) in run order: input 4, 5 (2 layers), 7, 8 (3), middle (3), output 0-2 (3), 3-5 (2)
SDXL_LIKE = [(("input", b), j) for b in (4, 5) for j in range(2)] + \
    [(("input", b), j) for b in (7, 8) for j in range(3)] + [(("middle", 0), j) for j in range(3)] + \
    [(("output", b), j) for b in (0, 1, 2) for j in range(3)] + [(("output", b), j) for b in (3, 4, 5) for j in range(2)]


def test_sd_family_is_the_sixteen_depth_one_layers():
    family = family_of(tiny_model())
    assert [layer.address for layer in family.layers] == [(*block, 0) for block in SD_BLOCKS]
    assert [layer.transformer_index for layer in family.layers] == list(range(16))
    assert [layer.reference_prefix for layer in family.layers] == list(SD_REFERENCE_PREFIXES)
    assert family.widths == tuple(slot_widths(64)) and family.depths == (1,) * 16
    assert (family.name, family.context_dim, family.latent_channels) == ("TinySD", 32, 4)
    assert {layer.head_dim for layer in family.layers} == {32}


def test_sdxl_shaped_family_addresses_every_layer_as_comfyui_runs_it():
    family = family_of(tiny_sdxl_like(DEPTHS))
    assert [(layer.address[:2], layer.address[2]) for layer in family.layers] == SDXL_LIKE
    assert family.depths == (2, 2, 3, 3, 3, 3, 3, 3, 2, 2, 2)
    assert family.widths == (128,) * 4 + (256,) * 18 + (128,) * 6
    assert family.layers[5].reference_prefix == "down_blocks.2.attentions.0.transformer_blocks.1"
    assert family.layers[10].reference_prefix == "mid_block.attentions.0.transformer_blocks.0"
    assert family.layers[-1].reference_prefix == "up_blocks.1.attentions.2.transformer_blocks.1"


@pytest.fixture(scope="module")
def sdxl_like():
    """An SDXL-shaped MODEL that is its own encoder, an adapter of random weights for the family's widths, a
    subject."""
    model = tiny_sdxl_like(DEPTHS, seed=3)
    widths = family_of(model).widths
    info = AdapterInfo(widths=widths, head_dim=32, base_model="tiny-sdxl-like", source="test")
    encoder = EZIGenEncoder(model=model, name="tiny.safetensors", info=info,  # the frozen UNet encodes, as SD's
                            adapter=adapter_patcher(random_adapter_state(5, widths=widths), info))
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        subject = encode_subject(encoder.model, tiny_vae(), random_context(), image, None, 0, 64, widths)
    return model, encoder, subject


def test_capture_and_injection_run_on_an_sdxl_shaped_unet(sdxl_like, monkeypatch):
    model, encoder, subject = sdxl_like
    family = family_of(model)
    # 64 px -> 8x8 latent: level 1 at 4x4, level 2 and the middle at 2x2
    assert [f.shape for f in subject.features] == [(1, 16 if w == 128 else 4, w) for w in family.widths]
    used = []
    original = SubjectKV.get
    monkeypatch.setattr(SubjectKV, "get", lambda self, layer, *a: used.append(layer) or original(self, layer, *a))
    patched = apply_subject(model, encoder, subject, 1.0, 0.0, 1.0)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    out = sample(patched, steps=2, noise=noise)
    assert sorted(set(used)) == list(range(len(family.layers)))  # every layer took its own adapter
    assert bool(torch.isfinite(out).all())
    assert (out - sample(model, steps=2, noise=noise)).abs().max() > 1e-4


def test_a_reference_file_of_another_family_loads_in_its_layer_order(tmp_path):
    """The checkpoint reader takes a file's layers from its key names (down, middle, up; layer 0 first), so a
    file written with the family's reference names comes back layer for layer."""
    family = family_of(tiny_sdxl_like(DEPTHS))
    state = random_adapter_state(6, widths=family.widths)
    reference = {"learnable_weights": state["learnable_weights"]}
    for layer in family.layers:
        for name, ours in REFERENCE_TENSOR_NAMES.items():
            reference[reference_key(layer.reference_prefix, name)] = state[f"blocks.{layer.index}.{ours}"]
    save_file({k: v.contiguous() for k, v in sorted(reference.items(), reverse=True)}, str(tmp_path / "x.safetensors"))
    weights = load_adapter(tmp_path / "x.safetensors")
    assert weights.info.widths == family.widths
    assert all(torch.equal(weights.state_dict[k], v) for k, v in state.items())


def test_a_files_layers_are_ordered_by_number_not_by_name():
    """Down blocks, the middle block, up blocks; by level, attention and layer as numbers (layer 10 after 9)."""
    prefixes = ["up_blocks.0.attentions.0.transformer_blocks.0",
                *(f"mid_block.attentions.0.transformer_blocks.{j}" for j in (10, 2, 0, 9, 1)),
                "down_blocks.10.attentions.0.transformer_blocks.0", "down_blocks.2.attentions.1.transformer_blocks.0"]
    keys = [f"{p}.adapter.to_q.weight" for p in prefixes] + ["learnable_weights", "conv_in.weight"]
    assert reference_layers(keys) == [
        "down_blocks.2.attentions.1.transformer_blocks.0", "down_blocks.10.attentions.0.transformer_blocks.0",
        *(f"mid_block.attentions.0.transformer_blocks.{j}" for j in (0, 1, 2, 9, 10)),
        "up_blocks.0.attentions.0.transformer_blocks.0"]

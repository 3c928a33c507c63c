"""The official checkpoint's 113 EZIGen tensors, kept as data, against the pack's loader, converter and exporter.

`tests/data/reference_checkpoint_keys.json` lists the names and shapes that the reference code registers onto
SD2.1-base's diffusers UNet. `tests/data/make_reference_keys.py` derives it from the reference's module
definitions without importing `ezigen_lib`, so the list is independent of the pack's key mapping. The released
checkpoint itself is not available to tests: they write random-weight files with exactly those names at the
real SD2.1-base widths and check that every tensor lands in the slot the reference means. Slot k is the k-th
entry of the JSON's `slot_order` (the UNet's execution order, which is also `learnable_weights[k]`).

Every check compares values slot by slot, because a permutation of two same-width slots keeps every name
and shape valid and would only show in the values.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ezigen_lib import convert
from ezigen_lib.checkpoint import (LEARNABLE_WEIGHTS, REFERENCE_TENSOR_NAMES, AdapterFileError, load_adapter,
                                   reference_key, reference_layers)
from ezigen_lib.family import family_of

from training_data import write_training_folder

from tiny_models import TINY_CHANNELS, random_adapter_state, tiny_model
from tiny_models import tiny_trainer

DATA = Path(__file__).resolve().parents[1] / "data"
KEYS_JSON = DATA / "reference_checkpoint_keys.json"
COMMITTED = json.loads(KEYS_JSON.read_text())
TENSORS: dict[str, tuple[int, ...]] = {name: tuple(shape) for name, shape in COMMITTED["tensors"].items()}
SLOT_ORDER: list[str] = COMMITTED["slot_order"]
BLOCK = ".transformer_blocks.0."
SD_BASE_CHANNELS = 320
SLOT_COUNT = 16

# Our canonical name inside `blocks.{k}` for each tensor of a reference block. Restated here rather than taken
# from ezigen_lib, so that a swapped entry in the pack's mapping (say to_k and to_v) fails these tests. Our
# adapter module names its layers as the reference's Attention_Adapter does; adapter_norm is our `norm`.
OURS = {
    "adapter.to_q.weight": "to_q.weight",
    "adapter.to_k.weight": "to_k.weight",
    "adapter.to_v.weight": "to_v.weight",
    "adapter.to_out.0.weight": "to_out.0.weight",
    "adapter.to_out.0.bias": "to_out.0.bias",
    "adapter_norm.weight": "norm.weight",
    "adapter_norm.bias": "norm.bias",
}


def slot_key(name: str) -> str:
    """The canonical key that the committed list says the reference tensor `name` must be loaded as."""
    if name == LEARNABLE_WEIGHTS:
        return name
    prefix, tensor = name.split(BLOCK)
    return f"blocks.{SLOT_ORDER.index(prefix)}.{OURS[tensor]}"


def committed_widths() -> tuple[int, ...]:
    return tuple(TENSORS[f"{prefix}{BLOCK}adapter_norm.weight"][0] for prefix in SLOT_ORDER)


def write_official(folder: Path, tensors: dict[str, torch.Tensor], prefix: str = "") -> Path:
    """An accelerate checkpoint folder as the reference writes it: model.safetensors with these tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    """Random fp32 weights (as the reference saves them) with exactly the committed names and shapes."""
    g = torch.Generator().manual_seed(2409)
    tensors = {name: torch.randn(shape, generator=g) * 0.02 for name, shape in TENSORS.items()}
    tensors[LEARNABLE_WEIGHTS] = 1.0 + torch.randn(SLOT_COUNT, generator=g) * 0.1
    return tensors


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory, official):
    folder = write_official(tmp_path_factory.mktemp("official") / "checkpoint-200000", official)
    yield folder
    shutil.rmtree(folder)  # about 200 MB: do not leave it in pytest's kept temporary folders


def refusal(path: Path) -> str:
    with pytest.raises(AdapterFileError) as info:
        load_adapter(path)
    return str(info.value)


def test_committed_list_is_the_references_113_tensors():
    """16 transformer blocks x 7 adapter tensors + learnable_weights, as the generator derives them today.

    The parameter total is checked against docs/method.md section 5, which counts it separately
    (sum over blocks of 4 C^2 + 3 C, plus 16).
    """
    assert len(TENSORS) == 113
    assert len(SLOT_ORDER) == len(set(SLOT_ORDER)) == 16
    assert TENSORS[LEARNABLE_WEIGHTS] == (16,)
    for prefix in SLOT_ORDER:
        assert {n.split(BLOCK)[1] for n in TENSORS if n.startswith(prefix + BLOCK)} == set(OURS)
    assert sorted(committed_widths()) == sorted([320] * 5 + [640] * 5 + [1280] * 6)
    assert sum(torch.Size(s).numel() for s in TENSORS.values()) == 49_599_056

    spec = importlib.util.spec_from_file_location("make_reference_keys", DATA / "make_reference_keys.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.render() == KEYS_JSON.read_text(), "re-run tests/data/make_reference_keys.py"


def test_pack_key_mapping_gives_exactly_the_committed_names():
    """The family read off an SD-layout UNet (ComfyUI's key map) and the reader of a file's own key names both
    name the committed tensors, layer for layer, with reference_key / REFERENCE_TENSOR_NAMES."""
    family = family_of(tiny_model())
    prefixes = [layer.reference_prefix for layer in family.layers]
    assert prefixes == [p + BLOCK.rstrip(".") for p in SLOT_ORDER]  # layer k = learnable_weights[k] = feature k
    assert reference_layers(list(TENSORS)) == prefixes
    ours = {reference_key(p, n) for p in prefixes for n in REFERENCE_TENSOR_NAMES} | {LEARNABLE_WEIGHTS}
    assert ours == set(TENSORS)
    assert REFERENCE_TENSOR_NAMES == OURS
    assert tuple(w * SD_BASE_CHANNELS // TINY_CHANNELS for w in family.widths) == committed_widths()


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_layout_loads_every_tensor_into_its_slot(tmp_path, official, official_folder, prefix):
    """The folder (and its model.safetensors), with or without DDP's `module.` prefix: each value in its slot."""
    folder = official_folder if not prefix else write_official(tmp_path / "checkpoint-200000", official, prefix)
    for source in (folder, folder / "model.safetensors"):
        weights = load_adapter(source)
        assert set(weights.state_dict) == {slot_key(n) for n in TENSORS}
        for name, tensor in official.items():
            assert torch.equal(weights.state_dict[slot_key(name)], tensor), f"{name} did not land in {slot_key(name)}"
        assert weights.info.widths == committed_widths()
        assert weights.info.head_dim == 64 and weights.info.base_model == "sd2.1-base"
        del weights


def test_converter_writes_every_slot_unchanged(tmp_path, official, official_folder):
    """`python -m ezigen_lib.convert` on the official layout: the 113 tensors, each one equal to its input."""
    for dtype, flag in ((torch.float32, ["--dtype", "fp32"]), (torch.float16, [])):  # fp16 is the default
        out = tmp_path / f"adapter-{dtype}.safetensors"
        assert convert.main([str(official_folder), str(out), *flag]) == 0
        with safe_open(str(out), "pt") as f:
            assert set(f.keys()) == {slot_key(n) for n in TENSORS}
            for name, tensor in official.items():
                got = f.get_tensor(slot_key(name))
                assert got.dtype == dtype and torch.equal(got, tensor.to(dtype)), f"{name} -> {slot_key(name)}"
            metadata = f.metadata()
        assert metadata["widths"] == ",".join(map(str, committed_widths())) and metadata["head_dim"] == "64"
        assert load_adapter(out).info.widths == committed_widths()
        out.unlink()


@pytest.mark.parametrize("name", [
    "down_blocks.0.attentions.0.transformer_blocks.0.adapter.to_q.weight",
    "mid_block.attentions.0.transformer_blocks.0.adapter.to_v.weight",
    "up_blocks.3.attentions.2.transformer_blocks.0.adapter_norm.bias",
    LEARNABLE_WEIGHTS,
])
def test_missing_one_official_tensor_is_refused(tmp_path, official, name):
    """The message counts what is missing and names it both ways: our key and the name in the user's file."""
    folder = write_official(tmp_path / "ckpt", {k: v for k, v in official.items() if k != name})
    message = refusal(folder)
    assert "1 of the 113 adapter tensors are missing" in message
    assert slot_key(name) in message and f"{name}" in message
    assert "ckpt" in message and "models/ezigen" in message  # names the file and where files go


@pytest.mark.parametrize("name,bad_shape", [
    ("up_blocks.2.attentions.1.transformer_blocks.0.adapter.to_out.0.weight", (1280, 1280)),  # a 1280 block's
    ("down_blocks.0.attentions.0.transformer_blocks.0.adapter.to_q.weight", (320, 640)),
    ("mid_block.attentions.0.transformer_blocks.0.adapter_norm.bias", (640,)),
    (LEARNABLE_WEIGHTS, (17,)),
])
def test_one_wrong_shape_is_refused(tmp_path, official, name, bad_shape):
    """One tensor with another shape is refused, naming it, its shape and the committed shape."""
    folder = write_official(tmp_path / "ckpt", {**official, name: torch.zeros(bad_shape)})
    message = refusal(folder)
    if name == LEARNABLE_WEIGHTS:
        assert f"learnable_weights has shape {bad_shape}, expected {TENSORS[name]}" in message
    else:
        assert f"'{slot_key(name)}' has shape {bad_shape}, expected {TENSORS[name]}" in message
        assert name.split(BLOCK)[0] in message  # the block, as the reference names it


def test_trainer_reference_folder_export_round_trips_every_slot(tmp_path):
    """`train --reference-folder` writes the committed names, and each holds the trainer's tensor for that slot.

    The tiny model has the same 16 blocks at 1/5 of SD2.1-base's widths: names must match the committed
    list exactly and shapes must be the committed ones scaled by that ratio. Values are checked against the
    trainer's weights both in the raw file (slot from the committed list) and through the pack's loader.
    """
    trainer = tiny_trainer(write_training_folder(tmp_path / "data", count=2), tmp_path / "out", steps=1)
    distinct = random_adapter_state(seed=11)  # different random values in every slot and tensor
    trainer.adapters.load_state_dict(distinct)
    trained = trainer.weights().state_dict
    folder = trainer.export_reference_folder(tmp_path / "reference-checkpoint")

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}
    assert set(raw) == set(TENSORS)
    for name, shape in TENSORS.items():
        want = shape if name == LEARNABLE_WEIGHTS else tuple(d * TINY_CHANNELS // SD_BASE_CHANNELS for d in shape)
        assert tuple(raw[name].shape) == want, name
        assert torch.equal(raw[name], distinct[slot_key(name)]), f"{name} does not hold {slot_key(name)}"

    loaded = load_adapter(folder)
    assert set(loaded.state_dict) == set(trained)
    for key, value in trained.items():
        assert torch.equal(loaded.state_dict[key], value), key

"""Loading every accepted checkpoint form, the converter round trip, and every bad file."""
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ezigen_lib import convert
from ezigen_lib.checkpoint import AdapterFileError, load_adapter
from tiny_models import slot_widths

from .checkpoints import to_reference_keys, write_malicious_pickle, write_reference_folder
from tiny_models import TINY_CHANNELS, random_adapter_state

CANONICAL = random_adapter_state(seed=5)
WHERE = "models/ezigen"


def assert_same_tensors(got: dict, want: dict):
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].float(), want[k].float(), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("fmt,prefix", [("safetensors", ""), ("safetensors", "module."), ("bin", ""),
                                        ("bin", "module.")])
def test_reference_folder_variants_load_and_convert(tmp_path, fmt, prefix):
    folder = write_reference_folder(tmp_path / "checkpoint-200000", CANONICAL, fmt, prefix)
    for source in (folder, next(folder.iterdir())):  # the folder or the file inside it
        weights = load_adapter(source)
        assert_same_tensors(weights.state_dict, CANONICAL)
        assert weights.info.widths == tuple(slot_widths(TINY_CHANNELS))
        assert weights.info.head_dim == 64 and weights.info.base_model == "sd2.1-base"

    out = tmp_path / "adapter.safetensors"
    assert convert.main([str(folder), str(out), "--head-dim", "32"]) == 0
    converted = load_adapter(out)
    assert all(t.dtype == torch.float16 for t in converted.state_dict.values())
    assert_same_tensors(converted.state_dict, CANONICAL)
    assert converted.info.head_dim == 32
    assert converted.metadata["format"] == "ezigen-adapter"
    assert converted.metadata["source"] == f"checkpoint-200000/{next(folder.iterdir()).name}"

    again = tmp_path / "again.safetensors"
    assert convert.main([str(out), str(again), "--dtype", "fp32"]) == 0
    reloaded = load_adapter(again)
    assert reloaded.info == converted.info
    assert all(t.dtype == torch.float32 for t in reloaded.state_dict.values())


def test_converted_file_is_adapter_only_and_small(tmp_path):
    folder = write_reference_folder(tmp_path / "ckpt", CANONICAL)
    out = tmp_path / "small.safetensors"
    convert.main([str(folder), str(out)])
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        assert len(list(f.keys())) == 16 * 7 + 1
        assert f.metadata()["format_version"] == "1"


def error_of(path) -> str:
    with pytest.raises(AdapterFileError) as info:
        load_adapter(path)
    message = str(info.value)
    assert str(path) in message and WHERE in message  # names the file and where files go
    return message


def test_not_an_ezigen_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(4, 4)}, str(path))
    assert "not an EZIGen checkpoint" in error_of(path)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in to_reference_keys(CANONICAL).items()}, str(good))
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "damaged" in error_of(bad)


def test_missing_tensors(tmp_path):
    sd = to_reference_keys(CANONICAL)
    del sd["mid_block.attentions.0.transformer_blocks.0.adapter.to_v.weight"]
    path = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    message = error_of(path)
    assert "1 of the 113 adapter tensors are missing" in message and "blocks.6.to_v.weight" in message


def test_wrong_shape(tmp_path):
    sd = dict(CANONICAL)
    sd["blocks.3.to_k.weight"] = torch.zeros(64, 64)
    path = tmp_path / "shape.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    message = error_of(path)
    assert "'blocks.3.to_k.weight' has shape (64, 64), expected (128, 128)" in message


def test_sdxl_shaped_file(tmp_path):
    sd = {"learnable_weights": torch.ones(70)}
    for prefix in ("down_blocks.1.attentions.0", "down_blocks.2.attentions.0", "up_blocks.0.attentions.0"):
        for depth in range(2):
            base = f"{prefix}.transformer_blocks.{depth}."
            sd[base + "adapter.to_q.weight"] = torch.zeros(8, 8)
            sd[base + "adapter_norm.weight"] = torch.zeros(8)
    path = tmp_path / "sdxl.safetensors"
    save_file(sd, str(path))
    assert "another layout" in error_of(path)


def test_nan_weights(tmp_path):
    sd = dict(CANONICAL)
    sd["blocks.0.norm.bias"] = torch.full_like(sd["blocks.0.norm.bias"], float("nan"))
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    assert "NaN" in error_of(path)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_code_executing_pickle_is_refused_unrun(tmp_path, writer):
    marker = Path("/tmp/ezigen-pickle-ran")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.bin"
    if writer == "pickle":
        write_malicious_pickle(path)
    else:
        from .checkpoints import _RunsCode
        torch.save({"learnable_weights": _RunsCode()}, str(path))
    assert "refused without running it" in error_of(path)
    assert not marker.exists()


def test_empty_folder_and_missing_file(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "neither model.safetensors nor pytorch_model.bin" in error_of(tmp_path / "empty")
    assert "no such file" in error_of(tmp_path / "nothing.safetensors")


def test_converter_cli_reports_errors(tmp_path, capsys):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(path))
    assert convert.main([str(path), str(tmp_path / "out.safetensors")]) == 2
    assert "not an EZIGen checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    assert os.listdir(tmp_path) == ["x.safetensors"]

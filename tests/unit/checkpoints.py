"""Writers for every on-disk form of EZIGen weights, at the tiny test layout."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from ezigen_lib.checkpoint import REFERENCE_TENSOR_NAMES, reference_key

from tiny_models import SD_REFERENCE_PREFIXES

OURS_BY_REFERENCE = {v: k for k, v in REFERENCE_TENSOR_NAMES.items()}


def to_reference_keys(canonical: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Canonical adapter tensors renamed as the reference main-UNet state dict, plus base-UNet tensors."""
    out = {}
    for key, tensor in canonical.items():
        if key == "learnable_weights":
            out[prefix + key] = tensor
            continue
        _, slot, ours = key.split(".", 2)
        out[prefix + reference_key(SD_REFERENCE_PREFIXES[int(slot)], OURS_BY_REFERENCE[ours])] = tensor
    # frozen base-UNet tensors that a loader must ignore
    out[prefix + "conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    out[prefix + "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"] = torch.zeros(32, 32)
    return out


def write_reference_folder(folder: Path, canonical: dict[str, torch.Tensor], fmt: str = "safetensors",
                           prefix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sd = to_reference_keys(canonical, prefix)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    else:
        torch.save(sd, str(folder / "pytorch_model.bin"))
    return folder


class _RunsCode:
    """Unpickling this object would call os.system: a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        import os
        return os.system, ("echo pwned > /tmp/ezigen-pickle-ran",)


def write_malicious_pickle(path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"learnable_weights": _RunsCode()}, f)
    return path

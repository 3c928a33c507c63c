"""The subject's keys and values: constant over a sampling run, computed once per layer, device and dtype."""
from __future__ import annotations

import torch

from .capture import SubjectFeatures


class SubjectKV:
    """Per-run cache of each layer's subject keys/values, shared by every copy of one subject patch (a gated
    or cropped copy reads the same subject through the same adapter); dropped after each run."""

    def __init__(self, adapter_patcher, subject: SubjectFeatures):
        self.adapter_patcher = adapter_patcher
        self.subject = subject
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, layer: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (layer, device, dtype)
        cached = self.cache.get(key)
        if cached is None:
            features = self.subject.features[layer].to(device=device, dtype=dtype)
            cached = self.adapter_patcher.model.subject_kv(layer, features)
            self.cache[key] = cached
        return cached

    def release(self) -> None:
        self.cache.clear()

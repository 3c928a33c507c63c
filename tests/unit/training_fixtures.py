"""A tiny trainer (the tiny SD-layout model, TAESD VAE, fixed text vectors)."""
from __future__ import annotations

import zlib
from pathlib import Path

import torch

from ezigen_lib.training.data import FolderDataset
from ezigen_lib.training.trainer import Trainer, TrainSettings

from .tiny import TINY_CONTEXT, tiny_model, tiny_vae


def encode_text(captions: list[str]) -> torch.Tensor:
    """A fixed random context per caption (the tiny model has no real text encoder)."""
    return torch.cat([torch.randn(1, 7, TINY_CONTEXT, generator=torch.Generator().manual_seed(zlib.crc32(c.encode())))
                      for c in captions])


def tiny_trainer(folder: Path, out: Path, **settings) -> Trainer:
    settings.setdefault("head_dim", 32)
    settings.setdefault("subject_dropout", 0.0)
    return Trainer(tiny_model(seed=7), tiny_vae(), encode_text, FolderDataset(folder, 64), out,
                   TrainSettings(**settings))

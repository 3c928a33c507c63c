"""A synthetic training folder and a tiny trainer (the tiny SD-layout model, TAESD VAE, fixed text vectors)."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ezigen_lib.training.data import FolderDataset
from ezigen_lib.training.trainer import Trainer, TrainSettings

from .tiny import TINY_CONTEXT, tiny_model, tiny_vae


def write_training_folder(root: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        for kind in ("subject", "target"):
            img = np.full((48, 48, 3), 255, np.uint8) if kind == "subject" else rng.integers(0, 255, (40, 56, 3), np.uint8)
            img[10:30, 12:36] = (40 * i % 255, 200, 90)
            (root / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / kind / f"{i}.png")
        rows.append({"subject": f"subject/{i}.png", "target": f"target/{i}.png", "caption": f"a thing number {i}",
                     "subject_caption": "a photo of a thing"})
    mask = np.zeros((48, 48), np.uint8)
    mask[8:32, 10:38] = 255
    Image.fromarray(mask).save(root / "mask0.png")
    rows[0]["subject_mask"] = "mask0.png"
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def encode_text(captions: list[str]) -> torch.Tensor:
    """A fixed random context per caption (the tiny model has no real text encoder)."""
    return torch.cat([torch.randn(1, 7, TINY_CONTEXT, generator=torch.Generator().manual_seed(zlib.crc32(c.encode())))
                      for c in captions])


def tiny_trainer(folder: Path, out: Path, **settings) -> Trainer:
    settings.setdefault("head_dim", 32)
    settings.setdefault("subject_dropout", 0.0)
    return Trainer(tiny_model(seed=7), tiny_vae(), encode_text, FolderDataset(folder, 64), out,
                   TrainSettings(**settings))

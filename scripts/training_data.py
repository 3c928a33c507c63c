"""A synthetic training folder (manifest.jsonl, subject/target pictures, one subject mask): the trainer's
input for the unit tests, the trainer CLI's e2e test and the training benchmark."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


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

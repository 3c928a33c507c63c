"""Training data in a plain folder: a manifest.jsonl beside the images.

Each line: {"subject": "subjects/dog.png", "target": "targets/dog_beach.png", "caption": "a dog on a beach",
            "subject_caption": "a photo of a dog", "subject_mask": "masks/dog.png"}   (the last two optional)
Paths are relative to the folder. Subjects are cut out onto white with their mask and squashed to a
square; targets are squashed to a square, as the reference does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..capture import prepare_subject_pixels

REQUIRED_KEYS = ("subject", "target", "caption")


class TrainingDataError(ValueError):
    pass


MAX_SUBJECTS = 4  # the reference's subject slots per example
# upstream's SDXL staged timesteps (doc A5, after AnyDoor): COCO / YouTube-VIS pairs only at high noise, the
# clean Subjects200K pairs (here: a manifest folder) only at low noise
HIGH_NOISE_TIMESTEPS = (333, 999)
LOW_NOISE_TIMESTEPS = (0, 665)


@dataclass(frozen=True)
class Example:
    subjects: torch.Tensor  # (n, res, res, 3) in [0, 1], backgrounds white; 1 <= n <= MAX_SUBJECTS
    target: torch.Tensor  # (res, res, 3) in [0, 1]
    caption: str
    subject_captions: tuple[str, ...]
    timesteps: tuple[int, int] | None = None  # its training timesteps (first, last) with staged timesteps


def _image(path: Path, mode: str) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            return torch.from_numpy(np.asarray(img.convert(mode), dtype=np.float32) / 255.0)
    except FileNotFoundError as exc:
        raise TrainingDataError(f"missing image {path}") from exc
    except OSError as exc:
        raise TrainingDataError(f"{path} is not a readable image ({exc})") from exc


class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, resolution: int):
        self.root = Path(root)
        self.resolution = resolution
        manifest = self.root / "manifest.jsonl"
        if not manifest.is_file():
            raise TrainingDataError(f"{manifest} not found: a training folder holds manifest.jsonl, one JSON object "
                                    f"per line with keys {', '.join(REQUIRED_KEYS)} (+ subject_caption, subject_mask)")
        self.rows = []
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{manifest}:{number}: not JSON ({exc.msg})") from exc
            missing = [k for k in REQUIRED_KEYS if not isinstance(row, dict) or not row.get(k)]
            if missing:
                raise TrainingDataError(f"{manifest}:{number}: missing {', '.join(missing)}")
            for key in ("subject", "target", "subject_mask"):
                if row.get(key) and not (self.root / row[key]).is_file():
                    raise TrainingDataError(f"{manifest}:{number}: {key} file {self.root / row[key]} not found")
            self.rows.append(row)
        if not self.rows:
            raise TrainingDataError(f"{manifest} lists no examples")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Example:
        row = self.rows[index]
        subject = _image(self.root / row["subject"], "RGB")[None]
        mask = _image(self.root / row["subject_mask"], "L")[None] if row.get("subject_mask") else None
        target = _image(self.root / row["target"], "RGB")[None]
        return Example(
            subjects=prepare_subject_pixels(subject, mask, self.resolution),
            target=prepare_subject_pixels(target, None, self.resolution)[0],
            caption=row["caption"],
            subject_captions=(row.get("subject_caption") or "a photo of a subject",),
            timesteps=LOW_NOISE_TIMESTEPS,
        )


def collate(examples: list[Example]) -> dict:
    """Targets stack; subjects stay per example, since examples may hold different numbers of them."""
    return {
        "subjects": [e.subjects for e in examples],
        "target": torch.stack([e.target for e in examples]),
        "caption": [e.caption for e in examples],
        "subject_captions": [list(e.subject_captions) for e in examples],
        "timesteps": [e.timesteps for e in examples],
    }

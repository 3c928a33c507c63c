"""A synthetic subject image, so the pack can run end to end without any user file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SUBJECT_IMAGE = "ezigen_subject.png"  # the file name the shipped workflows load
SECOND_SUBJECT_IMAGE = "ezigen_subject2.png"  # the two-subject workflow's second subject


def write_subject_image(input_dir: Path, name: str = SUBJECT_IMAGE, size: int = 96) -> Path:
    """An orange disc on white: the reference's subjects are objects on a white background."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), 255, np.uint8)
    c, r = size / 2, size * 0.32
    img[(yy - c) ** 2 + (xx - c) ** 2 < r ** 2] = (230, 120, 30)
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / name
    Image.fromarray(img).save(path)
    return path


def write_second_subject_image(input_dir: Path, name: str = SECOND_SUBJECT_IMAGE, size: int = 96) -> Path:
    """A blue square on white, so the two subjects differ at a glance."""
    img = np.full((size, size, 3), 255, np.uint8)
    img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (40, 90, 200)
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / name
    Image.fromarray(img).save(path)
    return path

SOURCE_IMAGE = "ezigen_source.png"  # the edit workflow's source: its transparent hole is the edit mask


def write_source_image(input_dir: Path, name: str = SOURCE_IMAGE, height: int = 80, width: int = 112) -> Path:
    """A striped scene with a transparent rectangle: LoadImage turns the transparency into the MASK."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., 0] = (xx * 255 // width).astype(np.uint8)
    rgba[..., 1] = np.where((yy // 10) % 2 == 0, 180, 60)
    rgba[..., 2] = 120
    rgba[..., 3] = 255
    rgba[height // 4: 3 * height // 4, width // 3: 2 * width // 3, 3] = 0
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / name
    Image.fromarray(rgba, "RGBA").save(path)
    return path

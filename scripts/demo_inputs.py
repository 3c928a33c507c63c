"""A synthetic subject image, so the pack can run end to end without any user file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SUBJECT_IMAGE = "ezigen_subject.png"  # the file name the shipped workflows load


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

"""The autostop decision as a picture: similarity per round against the threshold.

The chart is drawn after a finished run, so it must never throw the run away: values it cannot
place (NaN, infinity) are left out and named in the picture, and any other drawing failure gives a
picture that says so.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN = 512, 288, 44
PLOT_TOP = 24
NOTE_Y = PLOT_TOP + 4  # inside the plot, top left: the line that names what could not be drawn
log = logging.getLogger("EZIGen")


def similarity_chart(similarities: list[float], threshold: float, stop_reason: str) -> torch.Tensor:
    """(1, H, W, 3) IMAGE: one point per loop (its similarity to the round before), the threshold line."""
    try:
        img = _draw(list(similarities), threshold, stop_reason)  # list(): a non-sequence lands in the except too
    except Exception as exc:  # an output stage: a picture that says so, never an exception
        log.warning("EZIGen: the similarity chart could not be drawn: %s", exc)
        img = Image.new("RGB", (WIDTH, HEIGHT), "white")
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default()
        draw.text((MARGIN, HEIGHT // 2 - 14), "the similarity chart could not be drawn:", fill="black", font=font)
        draw.text((MARGIN, HEIGHT // 2), f"{type(exc).__name__}: {exc}"[:80], fill=(200, 40, 40), font=font)
        draw.text((MARGIN, HEIGHT // 2 + 14), "(the report has the figures)", fill="black", font=font)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _draw(similarities: list, threshold, stop_reason: str) -> Image.Image:
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    shown = [(i, float(v)) for i, v in enumerate(similarities) if _finite(v)]
    skipped = [(i, v) for i, v in enumerate(similarities) if not _finite(v)]
    has_threshold = _finite(threshold)
    values = [v for _, v in shown] + ([float(threshold)] if has_threshold else [])
    low = min(min(values) - 0.01, 0.9) if values else 0.9
    high = 1.0
    x0, y0, x1, y1 = MARGIN, PLOT_TOP, WIDTH - 16, HEIGHT - MARGIN
    count = max(len(similarities), 1)

    def point(i: int, v: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (i + 1) / (count + 1)
        y = y1 - (y1 - y0) * (min(max(v, low), high) - low) / (high - low)
        return x, y

    draw.rectangle((x0, y0, x1, y1), outline="black")
    for v in (low, (low + high) / 2, high):
        _, y = point(0, v)
        draw.text((4, y - 6), f"{v:.3f}", fill="black", font=font)
    if has_threshold:
        _, ty = point(0, float(threshold))
        draw.line((x0, ty, x1, ty), fill=(200, 40, 40), width=1)
        draw.text((x1 - 120, ty - 14), f"threshold {float(threshold):g}", fill=(200, 40, 40), font=font)
    points = [point(i, v) for i, v in shown]
    if len(points) > 1:
        draw.line(points, fill=(30, 90, 200), width=2)
    for (i, _), (x, y) in zip(shown, points):
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(30, 90, 200))
    for i in range(len(similarities)):
        draw.text((point(i, low)[0] - 4, y1 + 6), str(i + 1), fill="black", font=font)
    notes = [f"loop {i + 1} is {v}" for i, v in skipped] + ([] if has_threshold else [f"threshold is {threshold}"])
    if notes:
        draw.text((x0 + 4, NOTE_Y), ("not drawn: " + ", ".join(notes))[:80], fill=(200, 40, 40), font=font)
    draw.text((x0, 6), "similarity to the previous round, per loop", fill="black", font=font)
    draw.text((x0, HEIGHT - 18), f"stop: {stop_reason}"[:80], fill="black", font=font)
    return img

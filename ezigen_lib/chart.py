"""The autostop decision as a picture: similarity per round against the threshold."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN = 512, 288, 44


def similarity_chart(similarities: list[float], threshold: float, stop_reason: str) -> torch.Tensor:
    """(1, H, W, 3) IMAGE: one point per loop (its similarity to the round before), the threshold line."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    values = list(similarities) + [threshold]
    low = min(min(values) - 0.01, 0.9) if similarities else 0.9
    high = 1.0
    x0, y0, x1, y1 = MARGIN, 24, WIDTH - 16, HEIGHT - MARGIN
    count = max(len(similarities), 1)

    def point(i: int, v: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (i + 1) / (count + 1)
        y = y1 - (y1 - y0) * (min(max(v, low), high) - low) / (high - low)
        return x, y

    draw.rectangle((x0, y0, x1, y1), outline="black")
    for v in (low, (low + high) / 2, high):
        _, y = point(0, v)
        draw.text((4, y - 6), f"{v:.3f}", fill="black", font=font)
    _, ty = point(0, threshold)
    draw.line((x0, ty, x1, ty), fill=(200, 40, 40), width=1)
    draw.text((x1 - 120, ty - 14), f"threshold {threshold:g}", fill=(200, 40, 40), font=font)
    points = [point(i, v) for i, v in enumerate(similarities)]
    if len(points) > 1:
        draw.line(points, fill=(30, 90, 200), width=2)
    for i, (x, y) in enumerate(points):
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(30, 90, 200))
        draw.text((x - 4, y1 + 6), str(i + 1), fill="black", font=font)
    draw.text((x0, 6), "similarity to the previous round, per loop", fill="black", font=font)
    draw.text((x0, HEIGHT - 18), f"stop: {stop_reason}"[:80], fill="black", font=font)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]

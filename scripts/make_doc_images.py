"""Draw the pictures of the node docs (web/docs/images/*.png) with Pillow; rerun after changing them.

    python scripts/make_doc_images.py

The pictures explain the knobs: the split of the schedule on a timeline, a strip of rounds with the
autostop, the similarity chart (drawn by the pack's own chart code, the one the nodes output) and an
edit's source, mask and result region, and crop-and-stitch's box. They are diagrams: nothing here needs model weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inprocess import REPO  # noqa: E402 - and ezigen_lib (its chart) importable

OUT = REPO / "web" / "docs" / "images"

TEXT_ONLY, SUBJECT, LOOP = (120, 150, 200), (230, 120, 30), (90, 170, 90)


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def split_timeline(steps: int = 50, split: float = 0.4) -> Image.Image:
    """The decoupled pass: text-only layout steps, then the subject's steps; each loop repeats the tail."""
    width, height = 900, 250
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    x0, x1 = 40, width - 40
    start = int(steps - split * steps)  # the reference's arithmetic: subject from this step on
    tail = steps - start

    def x(step: float) -> float:
        return x0 + (x1 - x0) * step / steps

    d.text((x0, 10), f"EZIGen Sampler, {steps} steps, split_ratio {split}", fill="black", font=font(18))
    y = 50
    d.rectangle((x(0), y, x(start), y + 40), fill=TEXT_ONLY)
    d.rectangle((x(start), y, x(steps), y + 40), fill=SUBJECT)
    d.text((x(0) + 8, y + 10), f"steps 1-{start}: text only (layout)", fill="white", font=font(16))
    d.text((x(start) + 8, y + 10), f"steps {start + 1}-{steps}: + subject", fill="white", font=font(16))
    for step in range(0, steps + 1, 10):
        d.line((x(step), y + 42, x(step), y + 50), fill="black")
        d.text((x(step) - 8, y + 52), str(step), fill="black", font=font(13))
    d.text((x0, y + 72), "noise level falls from left to right", fill=(90, 90, 90), font=font(13))
    y = 160
    for k in range(2):
        top = y + k * 38
        d.text((x0, top + 6), f"loop {k + 1}: re-noise, then", fill="black", font=font(14))
        d.rectangle((x(start), top, x(steps), top + 28), fill=LOOP)
        d.text((x(start) + 8, top + 6), f"the last {tail} steps, subject on", fill="white", font=font(14))
    return img


def rounds_strip(similarities=(0.962, 0.984, 0.993), threshold: float = 0.99) -> Image.Image:
    """First pass and loops as tiles; the similarity of each loop to the round before; where it stops."""
    tile, gap, pad = 150, 50, 20
    count = len(similarities) + 1
    width = pad * 2 + count * tile + (count - 1) * gap
    img = Image.new("RGB", (width, tile + 120), "white")
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(3)
    for i in range(count):
        left = pad + i * (tile + gap)
        # a disc that settles round by round: each tile is the previous one plus less and less change
        yy, xx = np.mgrid[0:tile, 0:tile]
        wobble = 12 / (i + 1)
        cx, cy = tile / 2 + rng.normal(0, wobble), tile / 2 + rng.normal(0, wobble)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (tile * 0.3) ** 2
        pixels = np.full((tile, tile, 3), 245, np.uint8)
        pixels[disc] = SUBJECT
        img.paste(Image.fromarray(pixels), (left, pad))
        d.rectangle((left, pad, left + tile, pad + tile), outline="black")
        d.text((left, pad + tile + 8), "first pass" if i == 0 else f"loop {i}", fill="black", font=font(15))
        if i:
            s = similarities[i - 1]
            stop = s >= threshold
            d.text((left - gap + 4, pad + tile // 2 - 10), "->", fill="black", font=font(18))
            d.text((left, pad + tile + 30), f"similarity {s:.3f}", fill=(200, 40, 40) if stop else "black",
                   font=font(15))
            if stop:
                d.text((left, pad + tile + 52), f">= {threshold}: stop", fill=(200, 40, 40), font=font(15))
    return img


def similarity_chart_picture() -> Image.Image:
    from ezigen_lib.chart import similarity_chart

    chart = similarity_chart([0.962, 0.984, 0.993], 0.99, "similarity 0.993 >= 0.99 after 3 loops")
    return Image.fromarray((chart[0].numpy() * 255).round().astype(np.uint8))


def edit_mask_and_result() -> Image.Image:
    """Source, the painted mask, and what the edit regenerates (hatched) and keeps."""
    import tempfile

    from demo_inputs import write_source_image

    with tempfile.TemporaryDirectory() as tmp:
        rgba = np.asarray(Image.open(write_source_image(Path(tmp), height=160, width=224)))
    rgb, painted = rgba[..., :3].copy(), rgba[..., 3] == 0
    mask = np.where(painted, 255, 0).astype(np.uint8)
    result = rgb.copy()
    yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
    result[painted] = 245
    hatch = painted & (((yy + xx) // 6) % 2 == 0)
    result[hatch] = SUBJECT
    tiles = [(Image.fromarray(rgb), "source (IMAGE)"), (Image.fromarray(mask).convert("RGB"), "mask: white = edit"),
             (Image.fromarray(result), "result: hatched = new, rest kept")]
    w, h = tiles[0][0].size
    img = Image.new("RGB", (3 * w + 4 * 20, h + 60), "white")
    d = ImageDraw.Draw(img)
    for i, (tile, caption) in enumerate(tiles):
        left = 20 + i * (w + 20)
        img.paste(tile, (left, 20))
        d.rectangle((left, 20, left + w, 20 + h), outline="black")
        d.text((left, 28 + h), caption, fill="black", font=font(15))
    return img


def crop_and_stitch() -> Image.Image:
    """Crop-and-stitch on a 2048 x 1536 source: the box the pack's own geometry (ezigen_lib/crop.py) draws
    around a 300 px region, the box as the model sees it at short side 512, and the box pasted back."""
    from ezigen_lib.crop import Box, crop_box

    height, width, region = 1536, 2048, Box(820, 1240, 300, 300)
    box, work = crop_box(height, width, region, 512)
    shown = 0.25  # the source is drawn at a quarter of its size
    yy, xx = np.mgrid[0:height, 0:width]
    scene = np.stack([120 + 80 * yy / height, 160 - 40 * xx / width, 200 - 90 * yy / height], -1)
    scene[yy > height * 0.62] = (150, 110, 80)  # a floor
    sofa = (yy > 900) & (yy < 1250) & (xx > 300) & (xx < 1200)
    scene[sofa] = (70, 140, 90)
    scene = scene.astype(np.uint8)
    painted = np.zeros((height, width), bool)
    painted[region.slices] = True
    edited = scene.copy()
    hatch = painted & (((yy + xx) // 24) % 2 == 0)
    edited[painted] = 245
    edited[hatch] = SUBJECT

    def small(pixels: np.ndarray) -> Image.Image:
        return Image.fromarray(pixels).resize((int(width * shown), int(height * shown)), Image.Resampling.BILINEAR)

    def outline(d: ImageDraw.ImageDraw, left: int, top: int, b: Box, scale: float, colour, label: str = "") -> None:
        x0, y0 = left + b.left * scale, top + b.top * scale
        d.rectangle((x0, y0, x0 + b.width * scale, y0 + b.height * scale), outline=colour, width=3)
        if label:
            d.text((x0, y0 - 18), label, fill=colour, font=font(14))

    source_tile, result_tile = small(scene), small(edited)
    work_tile = Image.fromarray(edited[box.slices]).resize((work[1] // 2, work[0] // 2), Image.Resampling.BILINEAR)
    w, h = source_tile.size
    pad = 20
    img = Image.new("RGB", (w * 2 + work_tile.size[0] + pad * 4, h + 100), "white")
    d = ImageDraw.Draw(img)
    img.paste(source_tile, (pad, 40))
    outline(d, pad, 40, region, shown, (200, 40, 40), "mask")
    outline(d, pad, 40, box, shown, (30, 60, 200), "")
    d.text((pad, 10), f"source {width} x {height}: box around the mask (blue)", fill="black", font=font(15))
    left = pad * 2 + w
    img.paste(work_tile, (left, 40))
    d.rectangle((left, 40, left + work_tile.size[0], 40 + work_tile.size[1]), outline=(30, 60, 200), width=3)
    d.text((left, 10), f"edited at {work[0]} x {work[1]}", fill="black", font=font(15))
    d.text((left, 48 + work_tile.size[1]), f"box {box.height} x {box.width} px", fill=(30, 60, 200), font=font(14))
    d.text((left, 68 + work_tile.size[1]), "(drawn at half size)", fill=(90, 90, 90), font=font(13))
    left = pad * 3 + w + work_tile.size[0]
    img.paste(result_tile, (left, 40))
    outline(d, left, 40, box, shown, (30, 60, 200))
    d.text((left, 10), "pasted back: outside the box untouched", fill="black", font=font(15))
    d.text((pad, 50 + h), f"crop 'around mask', crop_context 0.5: the {region.height} px region grows by "
           f"{region.height // 2} px on every side; the whole image at short side 512 would give it "
           f"{region.height * 512 // height} work px, the box gives it {region.height * work[0] // box.height}.",
           fill="black", font=font(14))
    return img


PICTURES = {
    "split_timeline.png": split_timeline,
    "rounds_strip.png": rounds_strip,
    "similarity_chart.png": similarity_chart_picture,
    "edit_mask_result.png": edit_mask_and_result,
    "crop_and_stitch.png": crop_and_stitch,
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in PICTURES.items():
        draw().save(OUT / name, optimize=True)
        print(OUT / name)


if __name__ == "__main__":
    main()

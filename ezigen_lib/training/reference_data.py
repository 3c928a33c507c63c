"""The reference's two training sources as subject/target pairs (docs/method.md section 15).

- COCO 2014 (train2014 + val2014): the target is the whole image with its longest caption; the
  subjects are up to 4 of its instances (largest first; instances under 1000 px, or outside the
  larger half when there are more than 4, are skipped), each cut out onto white.
- YouTube-VIS 2019: one object in two frames of a video, the earlier frame giving the subject and a
  later one the target, with the reference's filters and crops. Unlike the reference, which draws a
  random video whatever index it is asked for, example i is always the same (seeded by i).
Images whose instances all fail the rules are left out instead of becoming the reference's four
black placeholder subjects.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from .data import HIGH_NOISE_TIMESTEPS, MAX_SUBJECTS, Example, TrainingDataError

YTVIS_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "a fine image of {}.",
                   "a close-up photo of {}.", "a good photo of {}.", "a cropped photo of {}.", "a bright photo of {}.")


def rle_to_mask(segmentation: dict) -> np.ndarray:
    """COCO run-length encoding (compressed string or list of counts) -> (h, w) bool, column-major runs."""
    h, w = segmentation["size"]
    counts = segmentation["counts"]
    if isinstance(counts, str):
        counts = _decode_counts(counts)
    flat = np.zeros(h * w, dtype=bool)
    position, value = 0, False
    for run in counts:
        flat[position:position + run] = value
        position += run
        value = not value
    return flat.reshape((w, h)).T


def _decode_counts(text: str) -> list[int]:
    """The compressed form: 5-bit groups in characters from '0', deltas against the count two back."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, dict):
        return rle_to_mask(segmentation)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in segmentation:
        draw.polygon([tuple(p) for p in np.asarray(polygon).reshape(-1, 2)], fill=255)
    return np.asarray(canvas) > 0


def _square(image: np.ndarray, fill: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.full((side, side, 3), fill, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = image
    return out


def _resized(image: np.ndarray, resolution: int) -> torch.Tensor:
    img = Image.fromarray(image).resize((resolution, resolution), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def cut_out(image: np.ndarray, mask: np.ndarray, expand: float = 1.0) -> np.ndarray:
    """The subject on white, cropped to its box (grown by `expand`, white outside the image), squared."""
    white = np.where(mask[..., None], image, 255).astype(np.uint8)
    y0, y1, x0, x1 = _bbox(mask)
    cy, cx, hh, hw = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) * expand / 2, (x1 - x0) * expand / 2
    y0, y1, x0, x1 = int(cy - hh), int(np.ceil(cy + hh)), int(cx - hw), int(np.ceil(cx + hw))
    padded = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y1, image.shape[0]), min(x1, image.shape[1])
    padded[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = white[sy0:sy1, sx0:sx1]
    return _square(padded, 255)


def _load(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (FileNotFoundError, OSError) as exc:
        raise TrainingDataError(f"cannot read image {path} ({exc})") from exc


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise TrainingDataError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainingDataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc


class CocoPairs(torch.utils.data.Dataset):
    """root/annotations/{instances,captions}_{split}.json and root/{split}/<file_name>."""

    def __init__(self, root: str | Path, resolution: int, splits=("train2014", "val2014"), limit: int = 100_000):
        self.root, self.resolution = Path(root), resolution
        self.items = []
        for split in splits:
            instances = _read_json(self.root / "annotations" / f"instances_{split}.json")
            captions = _read_json(self.root / "annotations" / f"captions_{split}.json")
            names = {c["id"]: c["name"].replace(" ", "") for c in instances["categories"]}
            by_image: dict[int, list] = {}
            for a in instances["annotations"]:
                by_image.setdefault(a["image_id"], []).append(a)
            texts: dict[int, list[str]] = {}
            for c in captions["annotations"]:
                texts.setdefault(c["image_id"], []).append(c["caption"].strip())
            for image in instances["images"]:
                anns = sorted(by_image.get(image["id"], []), key=lambda a: -a["area"])
                kept = [a for rank, a in enumerate(anns)
                        if a["area"] >= 1000 and not (len(anns) > MAX_SUBJECTS and rank >= len(anns) / 2)]
                if kept and texts.get(image["id"]):
                    self.items.append((split, image, kept[:MAX_SUBJECTS], max(texts[image["id"]], key=len), names))
        self.items = self.items[:limit]
        if not self.items:
            raise TrainingDataError(f"no usable COCO image under {self.root} (instances with captions)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        split, image, anns, caption, names = self.items[index]
        pixels = _load(self.root / split / image["file_name"])
        h, w = pixels.shape[:2]
        subjects = [_resized(cut_out(pixels, segmentation_mask(a["segmentation"], h, w)), self.resolution)
                    for a in anns]
        return Example(subjects=torch.stack(subjects), target=_resized(pixels, self.resolution), caption=caption,
                       subject_captions=tuple(f"a photo of a {names[a['category_id']]}." for a in anns),
                       timesteps=HIGH_NOISE_TIMESTEPS)


class YtvisPairs(torch.utils.data.Dataset):
    """root/JPEGImages/<file_names> and the YouTube-VIS 2019 instances JSON (videos, annotations, categories)."""

    ATTEMPTS = 20

    def __init__(self, root: str | Path, annotations: str | Path, resolution: int, limit: int = 100_000,
                 seed: int = 0):
        self.root, self.resolution, self.seed = Path(root), resolution, seed
        data = _read_json(Path(annotations))
        self.videos = {v["id"]: v for v in data["videos"]}
        self.names = {c["id"]: c["name"] for c in data["categories"]}
        self.objects = [a for a in data["annotations"]
                        if sum(s is not None for s in a["segmentations"]) >= 2 and a["video_id"] in self.videos]
        if not self.objects:
            raise TrainingDataError(f"{annotations} has no object annotated in two frames or more")
        self.limit = limit

    def __len__(self) -> int:
        return min(self.limit, len(self.objects) * 8)

    def __getitem__(self, index: int) -> Example:
        rng = random.Random(self.seed * 1_000_003 + index)
        for _ in range(self.ATTEMPTS):
            example = self._try(self.objects[rng.randrange(len(self.objects))], rng)
            if example is not None:
                return example
        raise TrainingDataError(f"YouTube-VIS example {index}: no frame pair passed the filters in "
                                f"{self.ATTEMPTS} draws")

    def _mask(self, ann, frame: int, h: int, w: int) -> np.ndarray | None:
        seg = ann["segmentations"][frame]
        return None if seg is None else segmentation_mask(seg, h, w)

    def _try(self, ann, rng: random.Random) -> Example | None:
        video = self.videos[ann["video_id"]]
        n, h, w = len(video["file_names"]), video["height"], video["width"]
        a = rng.randrange(0, max(1, n - n // 8))
        b = min(n - 1, a + rng.randint(n // 8, max(n // 8, n - a)))
        subject_mask, target_mask = self._mask(ann, a, h, w), self._mask(ann, b, h, w)
        if subject_mask is None or target_mask is None or not subject_mask.any() or not target_mask.any():
            return None
        labels, count = ndimage.label(subject_mask)
        largest = np.bincount(labels.ravel())[1:].max() if count else 0
        if largest / subject_mask.sum() <= 0.9:  # the subject must be (almost) one piece
            return None
        if not all(0.01 < m.mean() < 0.64 for m in (subject_mask, target_mask)):
            return None
        y0, y1, x0, x1 = _bbox(subject_mask)
        if (y1 - y0) < 0.1 * h or (x1 - x0) < 0.1 * w:
            return None
        ty0, ty1, tx0, tx1 = _bbox(target_mask)
        if (ty1 - ty0) * 1.1 > 0.8 * h or (tx1 - tx0) * 1.1 > 0.8 * w:
            return None
        first, second = (_load(self.root / "JPEGImages" / video["file_names"][i]) for i in (a, b))
        subject = cut_out(first, subject_mask, expand=rng.choice((1.1, 1.2, 1.3, 1.4)))
        if rng.random() < 0.5:
            subject = subject[:, ::-1].copy()
        side = int(max(ty1 - ty0, tx1 - tx0) * 1.1 * rng.uniform(1.3, 2.9))
        cy, cx = (ty0 + ty1) // 2, (tx0 + tx1) // 2
        top, left = max(cy - side // 2, 0), max(cx - side // 2, 0)
        target = _square(second[top:top + side, left:left + side], 0)
        name = self.names[ann["category_id"]]
        return Example(subjects=_resized(subject, self.resolution)[None], target=_resized(target, self.resolution),
                       caption=rng.choice(YTVIS_TEMPLATES).format(f"a {name}"),
                       subject_captions=(f"a photo of a {name}.",), timesteps=HIGH_NOISE_TIMESTEPS)

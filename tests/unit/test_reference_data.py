"""The reference's COCO 2014 and YouTube-VIS 2019 pair builders, on miniature datasets in their formats."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ezigen_lib.training.data import TrainingDataError, collate
from ezigen_lib.training.reference_data import CocoPairs, YtvisPairs, rle_to_mask

from training_data import write_training_folder

from tiny_models import tiny_trainer


def mask_counts(mask: np.ndarray) -> list[int]:
    flat = mask.T.ravel()  # column-major, runs start with zeros
    counts, value, run = [], False, 0
    for v in flat:
        if bool(v) == value:
            run += 1
        else:
            counts.append(run)
            value, run = not value, 1
    counts.append(run)
    return counts


def compress(counts: list[int]) -> str:
    """COCO's compressed RLE string (written independently of the decoder under test)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def test_rle_round_trips():
    rng = np.random.default_rng(1)
    mask = np.zeros((37, 53), bool)
    mask[5:30, 10:40] = True
    mask[rng.random(mask.shape) < 0.05] = True
    counts = mask_counts(mask)
    for encoded in (counts, compress(counts)):
        assert np.array_equal(rle_to_mask({"size": [37, 53], "counts": encoded}), mask)


def write_coco(root, with_captions=True):
    (root / "annotations").mkdir(parents=True)
    (root / "train2014").mkdir()
    images, anns = [], []
    for i in range(2):
        img = np.full((120, 160, 3), 200, np.uint8)
        img[20:80, 30:100] = (200, 40, 40)
        Image.fromarray(img).save(root / "train2014" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 120, "width": 160})
        anns.append({"id": 10 * i, "image_id": i, "category_id": 1, "area": 4200.0, "iscrowd": 0,
                     "segmentation": [[30, 20, 100, 20, 100, 80, 30, 80]]})
        if i == 1:  # a second subject, as uncompressed RLE, and one too small to keep
            m = np.zeros((120, 160), bool)
            m[90:115, 110:150] = True
            anns.append({"id": 11, "image_id": 1, "category_id": 2, "area": 1000.0, "iscrowd": 1,
                         "segmentation": {"size": [120, 160], "counts": mask_counts(m)}})
            anns.append({"id": 12, "image_id": 1, "category_id": 2, "area": 50.0, "iscrowd": 0,
                         "segmentation": [[0, 0, 5, 0, 5, 5]]})
    categories = [{"id": 1, "name": "traffic light"}, {"id": 2, "name": "dog"}]
    (root / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories}))
    caps = [{"image_id": i, "caption": c} for i in range(2) for c in ("a red box", "a red box on a grey wall")]
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps({"annotations": caps if with_captions else []}))
    return root


def test_coco_pairs_follow_the_reference_rules(tmp_path):
    data = CocoPairs(write_coco(tmp_path / "coco"), 64, splits=("train2014",))
    first, second = data[0], data[1]
    assert first.subjects.shape == (1, 64, 64, 3) and second.subjects.shape == (2, 64, 64, 3)
    assert first.caption == "a red box on a grey wall"  # the longest caption
    assert second.subject_captions == ("a photo of a trafficlight.", "a photo of a dog.")  # largest first
    assert first.subjects[0, 0, 0].tolist() == [1.0, 1.0, 1.0]  # cut out onto white
    assert first.target.shape == (64, 64, 3)


def test_coco_errors(tmp_path):
    with pytest.raises(TrainingDataError, match="instances_train2014.json not found"):
        CocoPairs(tmp_path, 64, splits=("train2014",))
    with pytest.raises(TrainingDataError, match="no usable COCO image"):
        CocoPairs(write_coco(tmp_path / "nocaps", with_captions=False), 64, splits=("train2014",))


def write_ytvis(root):
    frames = []
    (root / "JPEGImages" / "v1").mkdir(parents=True)
    segs = []
    for f in range(8):
        img = np.full((100, 100, 3), 90, np.uint8)
        m = np.zeros((100, 100), bool)
        m[20 + f:50 + f, 25:55] = True
        img[m] = (30, 160, 220)
        Image.fromarray(img).save(root / "JPEGImages" / "v1" / f"{f:05d}.jpg")
        frames.append(f"v1/{f:05d}.jpg")
        segs.append({"size": [100, 100], "counts": compress(mask_counts(m))})
    annotations = root / "train.json"
    annotations.write_text(json.dumps({
        "videos": [{"id": 1, "file_names": frames, "height": 100, "width": 100, "length": 8}],
        "annotations": [{"id": 1, "video_id": 1, "category_id": 3, "segmentations": segs}],
        "categories": [{"id": 3, "name": "bird"}]}))
    return root, annotations


def test_ytvis_pairs_are_seeded_by_index(tmp_path):
    root, annotations = write_ytvis(tmp_path / "ytvis")
    data = YtvisPairs(root, annotations, 64)
    a, again, other = data[3], data[3], data[4]
    assert torch.equal(a.subjects, again.subjects) and a.caption == again.caption  # the reference ignores idx
    assert a.subjects.shape == (1, 64, 64, 3) and a.subject_captions == ("a photo of a bird.",)
    assert not torch.equal(a.target, other.target) or not torch.equal(a.subjects, other.subjects)


def test_training_on_examples_with_different_subject_counts(tmp_path):
    folder = write_training_folder(tmp_path / "folder", count=2)
    coco = CocoPairs(write_coco(tmp_path / "coco"), 64, splits=("train2014",))
    for faithful_padding in (False, True):
        trainer = tiny_trainer(folder, tmp_path / f"out{faithful_padding}", faithful_padding=faithful_padding)
        batch = collate([coco[0], coco[1]])  # 1 and 2 subjects
        features = trainer.objective.subject_features(batch["subjects"], batch["subject_captions"])
        tokens = [f.shape[1] for f in features[0]]
        assert tokens == ([4 * 64] * 2 if faithful_padding else [64, 128])  # 8x8 latent tokens per subject
        loss = trainer.train_step(batch)
        assert np.isfinite(loss)

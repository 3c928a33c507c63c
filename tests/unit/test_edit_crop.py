"""Crop-and-stitch in EZIGen Edit: only a box around the mask is edited, everything outside it is the source's."""
import pytest
import torch

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.crop import Box, crop_box, work_area
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import EditInputError, edit_source
from ezigen_lib.inject import crop_subject_regions, subject_injections
from ezigen_lib.placement import Placement

from tiny_models import random_context

POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
CONTEXT = random_context(5)
SOURCE = torch.rand(1, 120, 200, 3, generator=torch.Generator().manual_seed(7))  # non-square
MASK = torch.zeros(1, 120, 200)
MASK[0, 40:60, 110:140] = 1.0
MASK[0, 38:40, 110:140] = 0.3  # a soft edge: inside the box, blended as today


def edit(parts, image=SOURCE, mask=MASK, model=None, **kw):
    tiny_model, vae = parts
    kw.setdefault("policy", LoopPolicy(loops=1))
    kw.setdefault("crop", "around mask")
    kw.setdefault("short_side", 64)
    kw.setdefault("steps", 10)
    settings = EditSettings(seed=1, sampler_name="euler", **kw)
    with torch.inference_mode():
        return run_edit(model or tiny_model, CONTEXT, vae, edit_source(image, mask), POSITIVE, NEGATIVE, settings)


def test_only_the_box_is_edited(parts):
    result = edit(parts)
    box, work = crop_box(120, 200, Box(38, 110, 22, 30), 64)
    assert result.report["crop"] == {"box": box.as_list(), "work_size": list(work)}
    assert result.report["processing_size"] == list(work) and result.round_images.shape[1:3] == work
    outside_box = torch.ones(120, 200, dtype=torch.bool)
    outside_box[box.slices] = False
    assert torch.equal(result.image[0][outside_box], SOURCE[0][outside_box])  # bit for bit the source
    unpainted = MASK[0] == 0
    assert torch.equal(result.image[0][unpainted], SOURCE[0][unpainted])  # in the box but not painted: as today
    painted = MASK[0] == 1
    assert (result.image[0][painted] - SOURCE[0][painted]).abs().mean() > 0.01
    soft = MASK[0] == 0.3
    assert not torch.equal(result.image[0][soft], SOURCE[0][soft])
    assert result.image.shape == SOURCE.shape


def test_the_box_is_what_the_model_sees(parts):
    """The work image is the box, not the whole source: a source white in the box and black elsewhere reaches
    the model all white."""
    box, work = crop_box(120, 200, Box(38, 110, 22, 30), 64)
    image = torch.zeros(1, 120, 200, 3)
    image[0][box.slices] = 1.0
    result = edit(parts, image=image, output_size="reference")
    assert result.image.shape == (1, *work, 3)  # the decoded work image
    assert (result.round_images[0] - 1.0).abs().max() < 1e-5  # the source as the model received it


def test_whole_image_and_reference_mode_keep_the_whole_source(parts):
    whole = edit(parts, crop="whole image")
    assert whole.report["crop"] == "whole image" and whole.report["processing_size"] == [64, 104]
    # the reference mode keeps the reference's own whole-image processing (a full run takes minutes: 512 px)
    reference = EditSettings(seed=1, crop="around mask", mode="reference")
    assert not reference.crops and reference.work_short_side == 512
    assert EditSettings(seed=1, crop="around mask", short_side=64).crops


def test_the_work_pixel_limit_applies_to_the_box(parts):
    """A 100 x 6000 source at short_side 512 is 512 x 30720 work pixels as a whole; the box around a small
    region is 512 x 512."""
    long_source = torch.rand(1, 100, 6000, 3, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(1, 100, 6000)
    mask[0, 40:60, 3000:3020] = 1.0
    with pytest.raises(EditInputError, match=r"more than EZIGen Edit's limit.*set crop to 'around mask'"):
        edit(parts, image=long_source, mask=mask, crop="whole image", short_side=512, steps=2)
    result = edit(parts, image=long_source, mask=mask, short_side=512, steps=2)
    assert result.report["crop"] == {"box": [30, 2990, 40, 40], "work_size": [512, 512]}


def test_a_box_beyond_the_limit_says_what_to_do():
    stripe = torch.zeros(1, 8, 4200)
    stripe[0, 2:6, :] = 1.0
    settings = EditSettings(seed=1, crop="around mask", short_side=512)  # 512 x 268800 work pixels
    with pytest.raises(EditInputError, match=r"box around the mask \(8 x 4200 source pixels\).*lower crop_context"):
        work_area((8, 4200), stripe, settings.short_side, settings.crop_context, crop=True)


def test_subject_masks_are_cut_to_the_box(parts):
    """A subject's mask is stretched to the whole image; inside the box it must be the box's part of it."""
    tiny_model, _ = parts
    (injection,) = subject_injections(tiny_model)
    region = torch.zeros(1, 60, 100)  # half the source's resolution
    region[0, 20:30, 55:70] = 1.0  # the painted region, in the subject mask's own frame
    placed = tiny_model.clone()
    patches = placed.model_options["transformer_options"]["patches"]
    patches["middle_patch"] = [injection.with_placement(Placement(region))]
    box = Box(30, 100, 40, 60)
    (cropped,) = subject_injections(crop_subject_regions(placed, box, (120, 200)))
    expected = torch.zeros(40, 60)
    expected[10:30, 10:40] = 1.0
    assert torch.equal(cropped.region[0], expected)
    assert subject_injections(placed)[0].region is region  # the input model is untouched
    result = edit(parts, model=placed)
    assert result.report["subjects"][0]["outside_edit_mask"] == 0.0 and not result.report["warnings"]


def test_the_edit_uses_the_subject_mask_cut_to_its_box(parts):
    """A subject mask painted exactly on the box is, cut to the box, a mask of ones: the same edit as a subject
    acting everywhere, bit for bit (uncut, it would be stretched over the box and act in a corner)."""
    tiny_model, _ = parts
    (injection,) = subject_injections(tiny_model)
    box, _ = crop_box(120, 200, Box(38, 110, 22, 30), 64)
    region = torch.zeros(1, 120, 200)
    region[0][box.slices] = 1.0
    placed = tiny_model.clone()
    patches = placed.model_options["transformer_options"]["patches"]
    patches["middle_patch"] = [injection.with_placement(Placement(region))]
    masked, everywhere = edit(parts, model=placed), edit(parts)
    assert torch.equal(masked.image, everywhere.image)
    # both acted on exactly the box, as a share of the whole image; the masked one on all its mask (no reach warning)
    box_share = round(box.height * box.width / (120 * 200), 4)
    assert masked.report["subjects"][0]["acted_share"] == masked.report["subjects"][0]["region"]["share"] == box_share
    assert everywhere.report["subjects"][0]["acted_share"] == box_share
    assert not [w for w in masked.report["warnings"] if "acted on" in w]


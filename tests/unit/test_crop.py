"""Crop-and-stitch geometry: the box around the mask and its work size."""
import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ezigen_lib.crop import DEFAULT_CONTEXT, MAX_ASPECT, MAX_SCALE_UP, Box, CropError, crop_box, mask_bounds, work_area

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def grown(region: Box, context: float, height: int, width: int) -> Box:
    """The region grown by `context` times its longer side, clamped: what the box must contain."""
    margin = math.ceil(context * max(region.height, region.width))
    top, left = max(0, region.top - margin), max(0, region.left - margin)
    bottom = min(height, region.top + region.height + margin)
    right = min(width, region.left + region.width + margin)
    return Box(top, left, bottom - top, right - left)


def contains(outer: Box, inner: Box) -> bool:
    return (outer.top <= inner.top and outer.left <= inner.left
            and outer.top + outer.height >= inner.top + inner.height
            and outer.left + outer.width >= inner.left + inner.width)


def test_mask_bounds():
    mask = torch.zeros(1, 40, 60)
    assert mask_bounds(mask) is None
    mask[0, 5, 7] = 1.0
    assert mask_bounds(mask) == Box(5, 7, 1, 1)
    mask[0, 20:31, 40:44] = 0.01  # a soft mask's faint edge is painted too
    assert mask_bounds(mask[0]) == Box(5, 7, 26, 37)


def test_interior_region_is_centred_and_undistorted():
    box, work = crop_box(2048, 2048, Box(900, 1000, 256, 256), 512)
    assert box == Box(772, 872, 512, 512) and work == (512, 512)  # 128 px of context on every side, 1:1
    box, work = crop_box(2048, 2048, Box(900, 1000, 100, 300), 512)
    assert box.height == 100 + 2 * 150 and work[0] == 512
    assert work[1] % 8 == 0 and abs(box.width * work[0] / box.height - work[1]) < work[0] / box.height
    assert contains(box, grown(Box(900, 1000, 100, 300), DEFAULT_CONTEXT, 2048, 2048))


def test_corner_and_border_regions_stay_inside_the_image():
    box, work = crop_box(1000, 1500, Box(0, 0, 100, 100), 512)  # the top-left corner
    assert (box.top, box.left) == (0, 0) and box.height == box.width == 150 and work == (512, 512)
    box, work = crop_box(1000, 1500, Box(900, 1400, 100, 100), 512)  # touching the bottom and right borders
    assert box == Box(850, 1350, 150, 150)
    box, _ = crop_box(1000, 1500, Box(0, 700, 1000, 40), 512)  # a stripe from the top border to the bottom one
    assert box.top == 0 and box.height == 1000 and contains(box, Box(0, 700, 1000, 40))


def test_non_square_sources():
    box, work = crop_box(300, 2000, Box(100, 900, 100, 100), 256)  # wide source, the box is cut by its height
    assert box.top == 50 and box.height == 200 and box.width == 200 and work == (256, 256)
    box, work = crop_box(2000, 300, Box(900, 100, 400, 100), 256)  # tall region in a tall source
    assert box.width == 300 and work[1] == 256 and work[0] % 8 == 0
    assert contains(box, grown(Box(900, 100, 400, 100), DEFAULT_CONTEXT, 2000, 300))


def test_region_larger_than_the_work_size():
    box, work = crop_box(2048, 3000, Box(200, 300, 1500, 1500), 512)
    assert box.top == 0 and box.height == 2048 and work == (512, box.width * 512 // 2048)
    assert contains(box, Box(200, 300, 1500, 1500))


def test_a_box_the_image_is_too_narrow_for_takes_all_of_it():
    box, work = crop_box(100, 103, Box(0, 0, 100, 103), 64)  # 103 px at 0.64 is 65.9 work px: floored to 64
    assert box == Box(0, 0, 100, 103) and work == (64, 64)


def test_context_zero_is_the_bounding_box_on_the_short_side():
    box, work = crop_box(1000, 1000, Box(400, 300, 80, 200), 512, context=0.0)
    assert (box.top, box.height) == (400, 80) and box.width >= 200 and work[0] == 512


@pytest.mark.parametrize("context", [-0.1, float("nan"), float("inf")])
def test_bad_context_is_refused(context):
    """Once, where the edit's settings are made (crop_box is given the checked value)."""
    from ezigen_lib.edit import EditSettings

    with pytest.raises(CropError, match="crop_context must be a number >= 0"):
        EditSettings(seed=1, crop_context=context)


def test_the_work_area_is_one_checked_value_for_the_box_and_the_whole_image():
    mask = torch.zeros(1, 120, 200)
    mask[0, 40:60, 110:140] = 1.0
    whole = work_area((120, 200), mask, 64, DEFAULT_CONTEXT, crop=False)
    assert (whole.box, whole.work_size, whole.cropped, whole.share) == (Box(0, 0, 120, 200), (64, 104), False, 1.0)
    assert whole.report() == "whole image"
    box = work_area((120, 200), mask, 64, DEFAULT_CONTEXT, crop=True)
    assert (box.box, box.work_size) == crop_box(120, 200, Box(40, 110, 20, 30), 64) and box.cropped
    assert box.share == box.box.height * box.box.width / (120 * 200)
    assert box.report() == {"box": box.box.as_list(), "work_size": list(box.work_size)}
    image = torch.rand(1, 120, 200, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(box.cut(image), image[:, box.box.top:box.box.top + box.box.height,
                                             box.box.left:box.box.left + box.box.width])
    pasted = box.paste(torch.full((1, 8, 8, 3), 0.5), image, mask)  # the edit, at any size, scaled to the box
    assert torch.equal(pasted[0][mask[0] == 0], image[0][mask[0] == 0])
    assert (pasted[0][mask[0] == 1] - 0.5).abs().max() < 1e-6
    with pytest.raises(dataclasses.FrozenInstanceError):
        box.work_size = (8, 8)


@st.composite
def scenes(draw):
    height, width = draw(st.integers(1, 5000)), draw(st.integers(1, 5000))
    top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
    region = Box(top, left, draw(st.integers(1, height - top)), draw(st.integers(1, width - left)))
    return height, width, region


@EXAMPLES
@given(scenes(), st.sampled_from([64, 256, 512, 1024, 2048]), st.floats(0.0, 3.0))
def test_box_properties(scene, short_side, context):
    height, width, region = scene
    box, (work_h, work_w) = crop_box(height, width, region, short_side, context)
    assert box.top >= 0 and box.left >= 0 and box.top + box.height <= height and box.left + box.width <= width
    assert contains(box, grown(region, context, height, width))
    assert work_h % 8 == 0 and work_w % 8 == 0 and min(work_h, work_w) == short_side
    # undistorted: one scale for both axes, to within a pixel, unless the long side spans the whole image
    short_is_height = box.height <= box.width
    scale = work_h / box.height if short_is_height else work_w / box.width
    long_box, long_work, long_limit = (box.width, work_w, width) if short_is_height else (box.height, work_h, height)
    if long_box < long_limit:
        assert abs(long_box * scale - long_work) <= scale + 1e-6
    else:
        assert abs(long_box * scale - long_work) < 8 + scale
    # where the image has room, no side is scaled up more than MAX_SCALE_UP times and the work size is at most
    # MAX_ASPECT:1 (EZIGen Edit refuses beyond; a box the image leaves room for must never be refused)
    least = math.ceil(short_side / MAX_SCALE_UP)
    assert box.height >= min(least, height) and box.width >= min(least, width)
    if min(box.height, box.width) >= least:
        assert min(work_h, work_w) / min(box.height, box.width) <= MAX_SCALE_UP
    short_box, short_limit = (box.height, height) if short_is_height else (box.width, width)
    if short_box < short_limit:  # the short side could still grow: the bound holds
        assert max(work_h, work_w) <= MAX_ASPECT * min(work_h, work_w)

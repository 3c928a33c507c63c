"""Regional subjects: Patch UNet Attention's mask weights the adapter's contribution per block token."""
import copy
import math

import pytest
import torch

from ezigen_lib.capture import encode_subject
from ezigen_lib.input_checks import InputValueError
from ezigen_lib.inject import SubjectInjection, apply_subject
from ezigen_lib.placement import Placement
from ezigen_lib.regions import block_grid, per_batch_item

from tiny_models import random_context, sample, tiny_encoder, tiny_model, tiny_vae


@pytest.fixture(scope="module")
def setup():
    encoder = tiny_encoder()
    with torch.inference_mode():
        subjects = [encode_subject(encoder.model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3, generator=g),
                                   None, 0, 64, encoder.info.widths)
                    for g in (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))]
    return tiny_model(seed=7), encoder, subjects


@pytest.fixture
def blocks(monkeypatch):
    """Every subject-patch call: the patch, its block's input and output, the output the same patch gives
    without a region, and the core's activations shape of the block."""
    calls = []
    original = SubjectInjection.__call__

    def spy(self, x, extra):
        out = original(self, x, extra)
        whole = copy.copy(self)
        whole.placement = Placement(None)
        calls.append({"patch": self, "x": x.clone(), "out": out.clone(), "whole": original(whole, x, extra),
                      "slot": extra["transformer_index"], "shape": tuple(extra["activations_shape"]),
                      "sigma": extra["sigmas"].max()})
        return out

    monkeypatch.setattr(SubjectInjection, "__call__", spy)
    return calls


def patched(setup, masks, model=None):
    model, encoder, subjects = setup if model is None else (model, setup[1], setup[2])
    for subject, mask in zip(subjects, masks):
        model = apply_subject(model, encoder, subject, 1.0, 0.0, 1.0, mask)
    return model


def left_half(height: int, width: int, columns: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[..., :columns] = 1.0
    return mask


def test_a_mask_of_zeros_changes_nothing_in_any_block(setup, blocks):
    plain = sample(setup[0], seed=3, steps=2)
    masked = sample(patched(setup, [torch.zeros(40, 24)]), seed=3, steps=2)
    assert torch.equal(masked, plain)
    assert sorted({c["slot"] for c in blocks}) == list(range(16))
    assert all(torch.equal(c["out"], c["x"]) for c in blocks)
    assert any(not torch.equal(c["whole"], c["x"]) for c in blocks)  # the same patch without a mask acts


def test_a_mask_of_ones_is_the_unmasked_patch_in_every_block(setup, blocks):
    unmasked = sample(patched(setup, [None]), seed=3, steps=2)
    masked = sample(patched(setup, [torch.ones(1, 17, 30)]), seed=3, steps=2)
    assert torch.equal(masked, unmasked)
    assert sorted({c["slot"] for c in blocks}) == list(range(16))
    assert all(torch.equal(c["out"], c["whole"]) for c in blocks)
    assert all(not torch.equal(c["out"], c["x"]) for c in blocks)


def test_a_non_square_latent_gets_the_mask_on_each_blocks_own_grid(setup, blocks):
    """72x136 px: a 9x17 latent, then 5x9, 3x5 and 2x3 grids. A left-half mask (68 of 136 px) must leave
    every token grid column right of the boundary untouched and act fully left of it."""
    noise = torch.randn((1, 4, 9, 17), generator=torch.Generator().manual_seed(4))
    sample(patched(setup, [left_half(72, 136, 68)]), seed=3, steps=2, noise=noise)
    grids = {c["shape"][2:] for c in blocks}
    assert grids == {(9, 17), (5, 9), (3, 5), (2, 3)}
    for c in blocks:
        h, w = c["shape"][2:]
        delta = (c["out"] - c["x"]).reshape(-1, h, w, c["x"].shape[-1])
        for j in range(w):
            first_px, last_px = math.floor(j * 136 / w), math.ceil((j + 1) * 136 / w)  # the cell's pixel columns
            if first_px >= 68:
                assert torch.equal(delta[:, :, j], torch.zeros_like(delta[:, :, j])), (h, w, j)
            elif last_px <= 68:
                whole = (c["whole"] - c["x"]).reshape(delta.shape)
                assert torch.equal(delta[:, :, j], whole[:, :, j]), (h, w, j)
                assert delta[:, :, j].abs().max() > 0


def test_the_grid_from_the_latent_size_matches_the_cores_activations(setup, blocks):
    """The fallback for cores that do not say a block's shape: halving the latent, rounding up."""
    noise = torch.randn((1, 4, 9, 17), generator=torch.Generator().manual_seed(4))
    sample(patched(setup, [torch.ones(8, 8)]), seed=3, steps=1, noise=noise)
    for c in blocks:
        tokens = c["x"].shape[1]
        assert block_grid(tokens, {"original_shape": [2, 4, 9, 17]}) == c["shape"][2:]
    with pytest.raises(RuntimeError, match="token grid"):
        block_grid(7, {})


def test_two_disjoint_masks_each_act_only_in_their_region(setup, blocks):
    left, right = left_half(64, 64, 32), 1.0 - left_half(64, 64, 32)
    two = patched(setup, [left, right])
    out = sample(two, seed=3, steps=2)
    assert not torch.equal(out, sample(setup[0], seed=3, steps=2))
    patches = two.model_options["transformer_options"]["patches"]["middle_patch"]
    for k, patch in enumerate(patches):
        own = [c for c in blocks if c["patch"] is patch]
        assert sorted({c["slot"] for c in own}) == list(range(16))
        acted = False
        for c in own:
            h, w = c["shape"][2:]
            region = torch.nn.functional.interpolate(patch.region[:, None], size=(h, w), mode="area").reshape(-1)
            delta = (c["out"] - c["x"]).abs().amax(dim=(0, 2))
            assert torch.equal(delta[region == 0], torch.zeros_like(delta[region == 0])), (k, h, w)
            acted = acted or bool((delta[region == 1] > 0).any())
        assert acted, k


def test_cond_and_uncond_halves_share_a_mask_and_batches_take_one_each(setup):
    masks = torch.stack([torch.full((3, 1), 0.25), torch.full((3, 1), 0.75)])
    rows = per_batch_item(masks, batch=4, chunks=2)  # (cond 0, cond 1, uncond 0, uncond 1)
    assert rows[:, 0, 0].tolist() == [0.25, 0.75, 0.25, 0.75]
    assert per_batch_item(masks[:1], batch=4, chunks=2).shape[0] == 1
    with pytest.raises(InputValueError, match="holds 2 masks but the latent batch is 3"):
        per_batch_item(masks, batch=6, chunks=2)


def test_a_batch_of_two_with_a_mask_each_matches_each_sample_alone(setup):
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    masks = torch.stack([left_half(8, 8, 4)[0], 1.0 - left_half(8, 8, 4)[0]])
    both = sample(patched(setup, [masks]), seed=3, steps=2, noise=noise)
    swapped = sample(patched(setup, [masks.flip(0)]), seed=3, steps=2, noise=noise)
    for i in range(2):
        alone = sample(patched(setup, [masks[i]]), seed=3, steps=2, noise=noise[i:i + 1])
        torch.testing.assert_close(both[i:i + 1], alone, atol=1e-3, rtol=1e-4)
        assert (swapped[i] - alone[0]).abs().max() > 1e-2  # the test can tell which mask went where


@pytest.mark.parametrize("mask,message", [
    (torch.ones(1, 1, 8, 8), "shape"),
    (torch.full((8, 8), float("nan")), "NaN"),
    (torch.ones(0, 8), "shape"),
])
def test_bad_masks_are_refused_before_patching(setup, mask, message):
    model = setup[0]
    before = dict(model.model_options["transformer_options"])
    with pytest.raises(InputValueError, match=message):
        patched(setup, [mask])
    assert model.model_options["transformer_options"] == before


POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]


def two_subject_model(setup, start=0.0, end=0.0):
    """Two subjects, left and right halves; percents that would never fire: the sampler must gate both."""
    model, encoder, subjects = setup
    for subject, mask in zip(subjects, (left_half(64, 64, 32), 1.0 - left_half(64, 64, 32))):
        model = apply_subject(model, encoder, subject, 1.0, start, end, mask)
    return model


def test_the_sampler_gates_every_subject_by_the_split_and_reports_each(setup, blocks):
    from ezigen_lib.autostop import LoopPolicy
    from ezigen_lib.generate import GenerationSettings, run_generation

    import comfy.samplers

    settings = GenerationSettings(seed=1, steps=6, split_ratio=0.5, sampler_name="euler", mode="clean",
                                  policy=LoopPolicy(min_loops=1, max_loops=2, threshold=2.0))
    model = two_subject_model(setup)
    with torch.inference_mode():
        result = run_generation(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, tiny_vae(), settings,
                                loop_negative=NEGATIVE)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", 6)
    start = float(sigmas[result.report["appearance_start_step"]])
    for subject in setup[2]:
        acted = [c for c in blocks if c["patch"].subject is subject and not torch.equal(c["out"], c["x"])]
        assert acted and all(float(c["sigma"]) <= start * (1 + 1e-5) for c in acted)
        assert len({round(float(c["sigma"]), 4) for c in acted if c["slot"] == 0}) == result.report["loop_steps"]
    assert result.report["loops"] == 2 and result.report["stop_reason"] == "reached max_loops=2"
    assert [s["region"] for s in result.report["subjects"]] == [{"masks": 1, "share": 0.5}] * 2
    assert [s["acted_share"] for s in result.report["subjects"]] == [0.5, 0.5]
    assert [s["images"] for s in result.report["subjects"]] == [1, 1]


def test_edit_reports_a_subject_mask_outside_the_edit_mask(setup):
    from ezigen_lib.autostop import LoopPolicy
    from ezigen_lib.edit import EditSettings, run_edit
    from ezigen_lib.edit_source import edit_source

    source = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    edit_mask = left_half(64, 64, 32)  # the left half is regenerated: the right subject lies all outside
    settings = EditSettings(seed=1, steps=6, short_side=64, sampler_name="euler", policy=LoopPolicy(loops=0))
    with torch.inference_mode():
        result = run_edit(two_subject_model(setup), random_context(5), tiny_vae(), edit_source(source, edit_mask),
                          POSITIVE, NEGATIVE, settings)
    left, right = result.report["subjects"]
    assert left["outside_edit_mask"] == 0.0 and right["outside_edit_mask"] == 1.0
    assert result.report["warnings"] == ["100% of subject 2's mask lies outside the edit mask: the subject acts only "
                                         "inside the edit mask."]
    assert torch.equal(result.image[:, :, 32:], source[:, :, 32:])


def test_a_mask_batch_that_fits_no_latent_batch_is_refused_before_sampling(setup):
    from ezigen_lib.autostop import LoopPolicy
    from ezigen_lib.generate import GenerationSettings, run_generation

    model = apply_subject(setup[0], setup[1], setup[2][0], 1.0, 0.0, 1.0, torch.ones(2, 8, 8))
    settings = GenerationSettings(seed=1, steps=2, sampler_name="euler", policy=LoopPolicy(loops=0))
    with pytest.raises(InputValueError, match="Subject 1's mask holds 2 masks but the latent batch is 3"):
        run_generation(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(3, 4, 8, 8)}, tiny_vae(), settings)


# -- the mask follows the image when the core evaluates part of the latent (issue 20) ----------------

def sample_with(model, positive, negative=None, cfg: float = 1.0, noise: torch.Tensor | None = None, steps: int = 2):
    """A stock KSampler run (comfy.sample.sample, euler) of a 64 x 128 px image with the given conditionings."""
    import comfy.sample

    if noise is None:
        noise = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "ddim_uniform", positive,
                                   negative if negative is not None else NEGATIVE, torch.zeros_like(noise),
                                   disable_pbar=True, seed=3)


def right_half_area(conditioning):
    """Core ConditioningSetArea: 64 x 64 px at x = 64 of a 128 x 64 image."""
    import nodes

    return nodes.ConditioningSetArea().append(conditioning, 64, 64, 64, 0, 1.0)[0]


def right_half_bounds(conditioning):
    """Core ConditioningSetMask with set_cond_area 'mask bounds' and a right-half mask."""
    import nodes

    return nodes.ConditioningSetMask().append(conditioning, 1.0 - left_half(64, 128, 64), "mask bounds", 1.0)[0]


@pytest.mark.parametrize("crop", [right_half_area, right_half_bounds])
def test_a_mask_outside_a_conditioning_area_leaves_the_image_as_the_unpatched_model_makes_it(setup, crop):
    """The issue's scenario: 128 x 64 image, subject mask the left half, the positive prompt cropped to the right
    half, cfg 1: the UNet only sees the right half, where the mask is 0."""
    positive = crop(POSITIVE)
    plain = sample_with(setup[0], positive)
    assert torch.equal(sample_with(patched(setup, [left_half(64, 128, 64)]), positive), plain)
    # the control: the right-half mask covers all the model sees, so it acts as a patch without a mask does
    unmasked = sample_with(patched(setup, [None]), positive)
    assert (unmasked - plain).abs().max() > 1e-3
    assert torch.equal(sample_with(patched(setup, [1.0 - left_half(64, 128, 64)]), positive), unmasked)


def test_conditionings_with_and_without_an_area_each_get_their_part_of_the_mask(setup, blocks):
    """cfg 5: the positive sees the right half, the negative the whole image, in one batch or two."""
    mask = left_half(64, 128, 96)  # three quarters: the right half's left half
    sample_with(patched(setup, [mask]), right_half_area(POSITIVE), cfg=5.0)
    assert {(8, 8), (8, 16)} <= {c["shape"][2:] for c in blocks}  # the right half and the whole image both ran
    for c in blocks:
        h, w = c["shape"][2:]
        delta = (c["out"] - c["x"]).abs().amax(dim=2).reshape(-1, h, w)
        whole = (c["whole"] - c["x"]).abs().amax(dim=2).reshape(-1, h, w)
        if (h, w) == (8, 8):  # the right half at full resolution: columns 0..3 masked, 4..7 not
            assert torch.equal(delta[:, :, 4:], torch.zeros_like(delta[:, :, 4:]))
            assert torch.equal(delta[:, :, :4], whole[:, :, :4]) and bool((delta[:, :, :4] > 0).any())
        if (h, w) == (8, 16):  # the whole image: columns 0..11 masked
            assert torch.equal(delta[:, :, 12:], torch.zeros_like(delta[:, :, 12:]))
            assert torch.equal(delta[:, :, :12], whole[:, :, :12])


def _context_window_options() -> set[str]:
    import inspect

    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    return set(inspect.signature(ContextWindowsManualNode.execute).parameters)


# ComfyUI >= 0.22 runs a window that does not start at 0 with the index before it in front (the causal anchor)
HAS_CAUSAL_WINDOW_FIX = "causal_window_fix" in _context_window_options()
needs_causal_window_fix = pytest.mark.skipif(not HAS_CAUSAL_WINDOW_FIX,
                                             reason="this ComfyUI's context windows have no causal anchor")


def context_windows(model, dim: int, length: int, overlap: int = 0, causal_window_fix: bool | None = None):
    """Core ContextWindowsManual: windows of `length` along `dim`, fused flat (disjoint windows are independent);
    `causal_window_fix` where the host has it (None: the node's default)."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    options = dict(model=model, context_length=length, context_overlap=overlap, context_schedule="standard_static",
                   context_stride=1, closed_loop=False, fuse_method="flat", dim=dim)
    if "freenoise" in _context_window_options():  # 0.8.0
        options["freenoise"] = False
    if causal_window_fix is not None and HAS_CAUSAL_WINDOW_FIX:
        options["causal_window_fix"] = causal_window_fix
    return ContextWindowsManualNode.execute(**options).result[0]


def test_the_mask_follows_context_windows_over_the_image_width(setup):
    """Two disjoint 8-column windows of a 16-column latent are two independent images: with a left-half mask the
    left window is what the unmasked patch makes, the right one what the unpatched model makes. (Without the
    causal anchor: on hosts that have it, it is turned off here.)"""
    mask = left_half(64, 128, 64)

    def windows(model):
        return context_windows(model, 3, 8, causal_window_fix=False)

    plain = sample_with(windows(setup[0]), POSITIVE, cfg=5.0)
    unmasked = sample_with(windows(patched(setup, [None])), POSITIVE, cfg=5.0)
    masked = sample_with(windows(patched(setup, [mask])), POSITIVE, cfg=5.0)
    assert (unmasked[..., :8] - plain[..., :8]).abs().max() > 1e-3
    assert torch.equal(masked[..., :8], unmasked[..., :8])
    assert torch.equal(masked[..., 8:], plain[..., 8:])


@needs_causal_window_fix
def test_the_mask_follows_context_windows_with_the_causal_anchor(setup):
    """With the causal anchor (the node's default), the right window [8, 16) runs on columns 7..15: the subject
    reaches it through column 7 exactly when the mask covers column 7. One step, so the right window's input is
    the same noise in every run."""
    def run(model):
        return sample_with(context_windows(model, 3, 8), POSITIVE, cfg=5.0, steps=1)

    plain = run(setup[0])
    unmasked = run(patched(setup, [None]))
    up_to_7 = run(patched(setup, [left_half(64, 128, 64)]))  # latent columns 0..7
    up_to_6 = run(patched(setup, [left_half(64, 128, 56)]))  # latent columns 0..6
    assert torch.equal(up_to_7[..., :8], unmasked[..., :8])  # the left window starts at 0: no anchor, all masked
    assert torch.equal(up_to_6[..., 8:], plain[..., 8:])  # column 7 unmasked: the right window never sees the subject
    assert (up_to_7[..., 8:] - plain[..., 8:]).abs().max() > 1e-4  # column 7 masked: it does, through the anchor
    assert not torch.equal(up_to_7[..., 8:], unmasked[..., 8:])  # and only through column 7


def test_a_context_window_with_a_causal_anchor_holds_the_anchor_first():
    """The core puts the anchor in front of the window's indices (`causal_anchor_index`): the view is one column
    wider than the index list, the anchor's column first, and the mask's columns follow it."""
    import inspect

    from comfy.context_windows import IndexListContextWindow

    from ezigen_lib.latent_views import WHOLE_SHAPE_KEY, latent_views
    from ezigen_lib.regions import view_region

    extra = {"total_frames": 16} if "total_frames" in inspect.signature(IndexListContextWindow).parameters else {}
    window = IndexListContextWindow(list(range(8, 16)), dim=3, **extra)
    window.causal_anchor_index = 7  # what the core sets under causal_window_fix (an attribute older cores ignore)
    options = {"context_window": window, WHOLE_SHAPE_KEY: (1, 4, 8, 16)}
    (view,) = latent_views([[{"uuid": "positive"}]], torch.zeros(1, 4, 8, 9), options).by_uuid.values()
    assert view.cols == tuple(range(7, 16)) and view.rows is None and view.shape == (8, 9)
    masks = torch.arange(16.0).expand(1, 8, 16)
    assert torch.equal(view_region(masks, view), masks[..., 7:])
    # the handler's latent_retain_index_list "0" (0.28.2): the model input's first column is the latent's column 0
    (kept,) = latent_views([[{"uuid": "positive"}]], torch.zeros(1, 4, 8, 9), options, retained=(0,)).by_uuid.values()
    assert kept.cols == (0, *range(8, 16))
    window.causal_anchor_index = -1  # the core's "none" (a window starting at 0)
    bare = latent_views([[{"uuid": "positive"}]], torch.zeros(1, 4, 8, 9), options)
    assert bare.problem == "a 8x9 part of the 8x16 latent, cut by something other than a conditioning area or a " \
                           "context window"


def test_a_mask_per_latent_follows_a_context_window_over_the_batch():
    """The cores' windows over the batch fail on image latents before the model runs (their timestep check), so
    the view is checked on its own: the window's latents pick their masks."""
    from comfy.context_windows import IndexListContextWindow

    from ezigen_lib.latent_views import latent_views
    from ezigen_lib.regions import view_region

    conds = [[{"uuid": "positive"}], [{"uuid": "negative", "area": (8, 8, 0, 8)}]]
    import inspect

    extra = {"total_frames": 3} if "total_frames" in inspect.signature(IndexListContextWindow).parameters else {}
    window = IndexListContextWindow([2], dim=0, **extra)  # 0.8.0 needs the length of the windowed dimension
    views = latent_views(conds, torch.zeros(1, 4, 8, 16), {"context_window": window}).by_uuid
    masks = torch.stack([torch.full((8, 16), float(k)) for k in range(3)])
    assert views["positive"].items == (2,) and torch.equal(view_region(masks, views["positive"]), masks[2:])
    assert views["negative"].cols == tuple(range(8, 16)) and views["negative"].rows is None
    assert torch.equal(view_region(masks, views["negative"]), masks[2:, :, 8:])
    with pytest.raises(InputValueError, match="holds 2 masks but the sampler runs latent 3"):
        view_region(masks[:2], views["positive"])


def test_a_model_input_cropped_where_the_patch_cannot_see_it_is_refused(setup):
    """A model wrapper that runs the UNet on two halves (as tiled-sampling nodes do): a mask could not follow."""
    from ezigen_lib.regions import MaskPlacementError

    def halves(apply_model, args):
        x, c = args["input"], args["c"]
        t = args["timestep"]
        return torch.cat([apply_model(x[..., :8], t, **c), apply_model(x[..., 8:], t, **c)], dim=-1)

    tiled = patched(setup, [left_half(64, 128, 64)])
    tiled.set_model_unet_function_wrapper(halves)
    with pytest.raises(MaskPlacementError, match="model input is 8x8 where ComfyUI's conditioning batch holds 8x16"):
        sample_with(tiled, POSITIVE)
    unmasked = patched(setup, [None])
    unmasked.set_model_unet_function_wrapper(halves)
    sample_with(unmasked, POSITIVE)  # without a mask there is nothing to place


def test_a_model_call_outside_the_samplers_batches_is_refused_with_a_mask(setup):
    from ezigen_lib.capture import capture_features
    from ezigen_lib.regions import MaskPlacementError

    model = patched(setup, [left_half(64, 64, 32)])
    with torch.inference_mode(), pytest.raises(MaskPlacementError, match="does not come through ComfyUI's"):
        capture_features(model.model, torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), random_context(),
                         torch.device("cpu"), torch.device("cpu"), torch.float32,
                         transformer_options=model.model_options["transformer_options"])


def test_the_sampler_with_an_area_outside_the_mask_equals_the_unpatched_model_and_says_so(setup):
    """The issue's scenario with the EZIGen Sampler: cfg 1, the positive on the right half, the mask on the left."""
    from ezigen_lib.autostop import LoopPolicy
    from ezigen_lib.generate import GenerationSettings, run_generation

    settings = GenerationSettings(seed=1, steps=4, cfg=1.0, split_ratio=0.5, sampler_name="euler", mode="clean",
                                  policy=LoopPolicy(loops=1))
    positive = right_half_area(POSITIVE)

    def generate(model):
        with torch.inference_mode():
            return run_generation(model, positive, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 16)}, tiny_vae(),
                                  settings)

    plain = generate(setup[0])
    masked = generate(patched(setup, [left_half(64, 128, 64)]))
    assert torch.equal(masked.latent, plain.latent)
    (subject,) = masked.report["subjects"]
    assert subject["region"] == {"masks": 1, "share": 0.5} and subject["acted_share"] == 0.0
    assert masked.report["warnings"] == [
        "Subject 1 acted on 0% of the image although its mask covers 50%: the model evaluated the rest without it "
        "(conditioning areas such as ConditioningSetArea or mask bounds)."]
    right = generate(patched(setup, [1.0 - left_half(64, 128, 64)]))
    assert not torch.equal(right.latent, plain.latent)
    assert right.report["subjects"][0]["acted_share"] == 0.5 and right.report["warnings"] == []

"""Editing: inversion trajectory, background preservation, masks, sizes and bad inputs."""
import math

import pytest
import torch

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.crop import processing_size
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import EditInputError, edit_source
from ezigen_lib.generate import GenerationSettings
from ezigen_lib.input_checks import InputValueError
from ezigen_lib.inversion import inversion_sigmas, invert
from ezigen_lib.step_counts import loop_start_index, reference_inversion_timesteps, reference_sigmas
from ezigen_lib.gate import NEVER_ON
from ezigen_lib.stage_sampling import CallCounter, with_window

from .reference_scheduler import reference_inverse_levels, reference_inverse_scheduler, reference_inversion_steps
from tiny_models import random_context

POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
CONTEXT = random_context(5)
SOURCE = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(4))
MASK = torch.zeros(50, 70)
MASK[10:30, 20:50] = 1


def edit(parts, image=SOURCE, mask=MASK, **kw):
    model, vae = parts
    kw.setdefault("policy", LoopPolicy(loops=1))
    settings = EditSettings(seed=1, steps=10, short_side=64, sampler_name=kw.pop("sampler_name", "euler"), **kw)
    with torch.inference_mode():
        return run_edit(model, CONTEXT, vae, edit_source(image, mask), POSITIVE, NEGATIVE, settings)


def test_modes_are_named_and_each_says_what_it_switches():
    assert EditSettings(seed=1).faithful and not EditSettings(seed=1, mode="clean").faithful
    reference = EditSettings(seed=1, mode="reference", mask_mode="hard")
    assert reference.faithful and reference.reference_output and not reference.hard_mask  # its own threshold
    assert EditSettings(seed=1, mask_mode="hard").hard_mask and not EditSettings(seed=1).hard_mask
    with pytest.raises(InputValueError, match="mode must be one of faithful, clean, reference; got 'exact'"):
        EditSettings(seed=1, mode="exact")
    with pytest.raises(InputValueError, match="mask_mode must be one of soft, hard; got 'firm'"):
        EditSettings(seed=1, mask_mode="firm")
    with pytest.raises(InputValueError, match="mode must be one of faithful, clean; got 'reference'"):
        GenerationSettings(seed=1, mode="reference")  # the reference's own processing is editing's


GRID_STEPS = [10, 20, 25, 30, 50, 100, 1000]
GRID_SPLITS = [0.2, 0.4, 0.6, 1.0]


@pytest.mark.parametrize("split", GRID_SPLITS)
@pytest.mark.parametrize("steps", GRID_STEPS)
def test_faithful_inversion_grid_is_the_references(parts, steps, split):
    """The levels faithful editing inverts along are the reference's scheduler's own: its timesteps and
    its sigmas (from the shipped SD2.1-base config, through from_config as the reference builds it)."""
    scheduler = reference_inverse_scheduler(steps)
    visited = reference_inversion_steps(scheduler, steps, split)
    expected = reference_inverse_levels(steps, split)
    assert reference_inversion_timesteps(steps, split) == expected
    model_sampling = parts[0].get_model_object("model_sampling")
    loop_sigmas = reference_sigmas(model_sampling, steps)[loop_start_index(steps, split):]
    levels = inversion_sigmas(model_sampling, loop_sigmas, steps, split, faithful=True)
    if steps < 1000:
        torch.testing.assert_close(levels, scheduler.sigmas[:len(visited) + 1].float(), rtol=5e-5, atol=0)  # two fp32 cumprods
    else:  # diffusers drops the repeated timestep of N = 1000 but not its sigma: the reference's solver would
        # take a zero-length step there (and divide by it); the pack steps on the distinct timesteps
        assert len(set(scheduler.sigmas.tolist())) < len(scheduler.sigmas)
        assert bool((levels[1:] > levels[:-1]).all())


def test_faithful_inversion_hands_over_at_t400_for_the_defaults():
    assert reference_inversion_timesteps(50, 0.4) == list(range(0, 401, 20))
    assert reference_inversion_timesteps(30, 0.4)[-3:] == [333, 366, 400]


@pytest.mark.parametrize("steps", [30, 50])
def test_inversion_trajectory_matches_the_reference_scheduler_on_the_tiny_unet(parts, steps):
    """The whole faithful inversion trajectory, stepped by diffusers' scheduler (built as the reference
    builds it) on the tiny UNet's noise prediction, against the pack's, level by level."""
    model, vae = parts
    split = 0.4
    scheduler = reference_inverse_scheduler(steps)
    unet = model.model.diffusion_model
    with torch.inference_mode():
        latent = vae.encode(SOURCE)
        z = model.model.process_latent_in(latent)
        expected = [z]
        for t in reference_inversion_steps(scheduler, steps, split):
            eps = unet(expected[-1], torch.tensor([float(t)]), context=CONTEXT)
            expected.append(scheduler.step(eps, t, expected[-1]).prev_sample)
        model_sampling = model.get_model_object("model_sampling")
        loop_sigmas = reference_sigmas(model_sampling, steps)[loop_start_index(steps, split):]
        levels = inversion_sigmas(model_sampling, loop_sigmas, steps, split, faithful=True)
        trajectory = invert(with_window(model, NEVER_ON, CallCounter()), CONTEXT, latent, levels)
    assert len(trajectory) == len(expected) == math.ceil(split * steps) + 1
    for k, (x, sigma, reference) in enumerate(zip(trajectory, levels, expected)):
        # fp32 over up to 20 steps, both sides: summation order (thread count) moves the last bits by ~1e-5
        torch.testing.assert_close(x / math.sqrt(1 + float(sigma) ** 2), reference, rtol=1e-4, atol=1e-4,
                                   msg=lambda m: f"level {k}: {m}")


@pytest.mark.parametrize("solver", ["dpmpp_2m", "euler"])
def test_inversion_trajectory_length_and_levels(parts, solver):
    model, vae = parts
    sigmas = model.get_model_object("model_sampling").sigma(torch.tensor([1.0, 101.0, 201.0, 301.0]))
    counter = CallCounter()
    with torch.inference_mode():
        latent = vae.encode(SOURCE)
        trajectory = invert(with_window(model, NEVER_ON, counter), CONTEXT, latent, sigmas, solver)
    assert len(trajectory) == 4 and counter.calls == 3  # no CFG: one evaluation per step
    start_scale = math.sqrt(1 + float(sigmas[0]) ** 2)
    torch.testing.assert_close(trajectory[0], model.model.process_latent_in(latent) * start_scale)
    clean = trajectory[0] / start_scale
    deviation = [float((x / math.sqrt(1 + float(s) ** 2) - clean).std()) for x, s in zip(trajectory, sigmas)]
    assert deviation[0] == 0 and deviation[1] < deviation[2] < deviation[3]  # the latent drifts towards noise


def test_background_outside_the_mask_is_kept_exactly(parts):
    model, vae = parts
    result = edit(parts, mode="clean")
    outside = MASK == 0
    assert torch.equal(result.image[0][outside], SOURCE[0][outside])  # pixels: taken from the source
    assert (result.image[0][~outside] - SOURCE[0][~outside]).abs().mean() > 0.01
    size = processing_size(50, 70, 64)
    with torch.inference_mode():
        work = torch.nn.functional.interpolate(SOURCE.movedim(-1, 1), size=size, mode="bicubic", antialias=True,
                                               align_corners=False).clamp(0, 1).movedim(1, -1)
        encoded = vae.encode(work)
    latent_mask = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(MASK[None, None], size=size, mode="bilinear", align_corners=False),
        size=(size[0] // 8, size[1] // 8), mode="bilinear", align_corners=False)[0, 0]
    keep = latent_mask == 0  # latents: the clean mode ends on the source's own latent
    torch.testing.assert_close(result.latent[0][:, keep], encoded[0][:, keep], atol=1e-4, rtol=1e-4)
    assert result.report["unet_evaluations"] == 4 and result.report["inversion_evaluations"] == 4


def test_faithful_counts_and_sizes(parts):
    result = edit(parts, policy=LoopPolicy(loops=2))
    assert result.report["unet_evaluations"] == 2 * 4
    assert result.report["inversion_evaluations"] == 2 * math.ceil(0.4 * 10)
    assert result.report["processing_size"] == [64, 88] and result.image.shape == (1, 50, 70, 3)
    assert result.round_images.shape == (3, 64, 88, 3)  # the source, then two rounds
    reference = edit(parts, output_size="reference")
    assert reference.image.shape == (1, 64, 88, 3)


def test_the_first_round_always_runs(parts):
    """Editing has no first pass of its own: loops = 0 still regenerates once; the policy counts after it."""
    once = edit(parts, policy=LoopPolicy(loops=0))
    assert once.report["loops"] == 1 and once.report["unet_evaluations"] == 4
    assert once.round_images.shape[0] == 2  # the source, then the one round
    assert once.report["stop_reason"] == "ran the requested 0 loops"


def test_empty_and_full_masks(parts):
    empty = edit(parts, mask=torch.zeros(50, 70))
    assert torch.equal(empty.image, SOURCE) and empty.report["unet_evaluations"] == 0
    full = edit(parts, mask=torch.ones(50, 70))
    assert (full.image - SOURCE).abs().mean() > 0.01


def test_soft_and_hard_masks(parts):
    soft_mask = MASK * 0.5
    soft = edit(parts, mask=soft_mask, mode="clean")
    hard = edit(parts, mask=soft_mask, mode="clean", mask_mode="hard")
    assert torch.equal(hard.image, SOURCE)  # no pixel fully painted: nothing to change
    assert not torch.equal(soft.image, SOURCE)


def test_alpha_and_odd_sizes(parts):
    rgba = torch.cat([SOURCE[:, :49, :67], torch.zeros(1, 49, 67, 1)], dim=-1)
    result = edit(parts, image=rgba, mask=MASK[:49, :67])
    assert result.image.shape == (1, 49, 67, 3)


@pytest.mark.parametrize("image,mask,message", [
    (torch.rand(2, 50, 70, 3), MASK, "one source image at a time"),
    (SOURCE, torch.ones(40, 70), "differs from the source size"),
    (SOURCE, torch.zeros(64, 64), r"no region is painted.*MaskEditor.*connect a MASK"),  # LoadImage, no alpha
    (SOURCE, torch.zeros(2, 50, 70), "one mask per edit"),
    (SOURCE, torch.zeros(1, 50, 70, 3), "single-channel MASK"),
])
def test_bad_inputs(parts, image, mask, message):
    with pytest.raises(EditInputError, match=message):
        edit(parts, image=image, mask=mask)


def test_dpmpp_inverse_matches_the_reference_scheduler(parts):
    """Our DPM-Solver++(2M) inverse against the reference's DPMSolverMultistepInverseScheduler (built from
    the shipped SD2.1-base config as the reference builds it), on an analytic noise predictor."""
    from ezigen_lib.inversion import _dpmpp_2m_inverse

    model_sampling = parts[0].get_model_object("model_sampling")

    def eps(x_vp, t):
        return 0.3 * x_vp + 0.002 * t - 0.1 * x_vp ** 2

    scheduler = reference_inverse_scheduler(50)
    visited = reference_inversion_steps(scheduler, 50, 0.4)
    steps = reference_inversion_timesteps(50, 0.4)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = z.clone()
    for t in visited:
        expected = scheduler.step(eps(expected, float(t)), t, expected).prev_sample

    sigmas = model_sampling.sigma(torch.tensor(steps, dtype=torch.float32))

    def denoiser(x_ve, sigma):  # ComfyUI's view of the same predictor
        s = sigma[0]
        return x_ve - s * eps(x_ve / torch.sqrt(1 + s ** 2), float(model_sampling.timestep(s)))

    x = _dpmpp_2m_inverse(denoiser, z * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, trajectory=[])
    torch.testing.assert_close(x / math.sqrt(1 + float(sigmas[-1]) ** 2), expected, atol=1e-4, rtol=1e-4)
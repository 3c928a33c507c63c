"""Schedule arithmetic for every allowed (steps, split, scheduler, mode), and seeds for every widget value."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import comfy.samplers

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.input_checks import InputValueError
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import edit_source
from ezigen_lib.inversion import inversion_sigmas
from ezigen_lib.generate import GenerationSettings, run_generation
from ezigen_lib.stage_sampling import sampling_schedule
from ezigen_lib.step_counts import (SEED_SPACE, appearance_start_index, derive_seed, loop_start_index,
                                 reference_inversion_timesteps, reference_timesteps)

from tiny_models import random_context, tiny_model

MODEL_SAMPLING = tiny_model().get_model_object("model_sampling")
STEPS = st.integers(min_value=1, max_value=1000)  # the nodes' range
SPLITS = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
EDIT_SPLITS = st.floats(min_value=0.05, max_value=1.0, allow_nan=False)  # the edit node's range
SCHEDULERS = st.sampled_from(list(comfy.samplers.KSampler.SCHEDULERS))
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def schedule_or_refusal(scheduler: str, steps: int, faithful: bool) -> torch.Tensor | None:
    """The schedule sampled; None where the host's own schedule is not finite (ComfyUI's kl_optimal at 1 step),
    which must be refused with a message naming the scheduler rather than sampled."""
    host = comfy.samplers.calculate_sigmas(MODEL_SAMPLING, scheduler, steps)
    if not bool(torch.isfinite(host).all()) and not (faithful and scheduler == "ddim_uniform"):
        with pytest.raises(InputValueError, match=f"the {scheduler} scheduler gives no usable schedule"):
            sampling_schedule(MODEL_SAMPLING, scheduler, steps, faithful)
        return None
    return sampling_schedule(MODEL_SAMPLING, scheduler, steps, faithful)[0]


def test_kl_optimal_at_one_step_is_refused_by_name_or_sampled_as_the_host_gives_it():
    """Found by the property tests: ComfyUI (0.3.75, 0.8.0) computes kl_optimal's 1-step schedule as NaN."""
    host = comfy.samplers.calculate_sigmas(MODEL_SAMPLING, "kl_optimal", 1).cpu()
    if bool(torch.isfinite(host).all()):  # a host that fixed it
        assert torch.equal(sampling_schedule(MODEL_SAMPLING, "kl_optimal", 1, faithful=False)[0], host)
        return
    with pytest.raises(InputValueError, match="kl_optimal scheduler gives no usable schedule for 1 step"):
        sampling_schedule(MODEL_SAMPLING, "kl_optimal", 1, faithful=False)


@EXAMPLES
@given(steps=STEPS, split=SPLITS, scheduler=SCHEDULERS, faithful=st.booleans())
def test_generation_schedule_arithmetic(steps, split, scheduler, faithful):
    sigmas = schedule_or_refusal(scheduler, steps, faithful)
    if sigmas is None:
        return
    n = len(sigmas) - 1
    assert n >= 1 and bool(torch.isfinite(sigmas).all()) and float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] <= sigmas[:-1]).all())
    if faithful and scheduler == "ddim_uniform":
        assert n == steps  # the reference's N timesteps, not ComfyUI's N + 1
    assert 0 <= appearance_start_index(n, split) <= n and 0 <= loop_start_index(n, split) <= n
    assert n - loop_start_index(n, split) == n - int(n - split * n)  # the loop's steps, as the reference counts


@EXAMPLES
@given(steps=STEPS, split=EDIT_SPLITS, scheduler=SCHEDULERS, faithful=st.booleans())
def test_inversion_grid_rises_strictly_to_the_editing_start(steps, split, scheduler, faithful):
    sigmas = schedule_or_refusal(scheduler, steps, faithful)
    if sigmas is None:
        return
    n = len(sigmas) - 1
    loop_sigmas = sigmas[loop_start_index(n, split):]
    levels = inversion_sigmas(MODEL_SAMPLING, loop_sigmas, n, split, faithful)
    assert len(levels) >= 1 and bool(torch.isfinite(levels).all())  # 1: editing starts at sigma_min itself
    assert bool((levels[1:] > levels[:-1]).all()), levels  # no step of length 0 (DPM-Solver++ divides by it)
    assert float(levels[0]) > 0
    if faithful:
        timesteps = reference_inversion_timesteps(n, split)
        # ceil(s N) steps; N = 1000 has 999 distinct timesteps before the final t = 999 (test_edit.py checks it with diffusers)
        assert len(timesteps) - 1 == min(math.ceil(split * n), 999) and timesteps[0] == 0 and timesteps[-1] <= 999
    else:
        assert torch.allclose(levels[-1], loop_sigmas[0])  # clean: ends exactly where editing starts


@EXAMPLES
@given(steps=STEPS)
def test_reference_timesteps_are_the_leading_spacing_and_distinct(steps):
    timesteps = reference_timesteps(steps)
    assert len(timesteps) == steps == len(set(timesteps))
    assert all(0 <= t <= 999 for t in timesteps) and timesteps == sorted(timesteps, reverse=True)
    if steps < 1000:  # N = 1000 would index t = 1000, past the training schedule
        assert timesteps == [k * (1000 // steps) + 1 for k in reversed(range(steps))]


@given(seed=st.integers(min_value=0, max_value=SEED_SPACE - 1), a=st.integers(0, 100), b=st.integers(0, 1000))
def test_derived_seeds_are_valid_generator_seeds(seed, a, b):
    derived = derive_seed(seed, "edit", a, b)
    assert 0 <= derived and derived + 1 < SEED_SPACE  # newer cores seed their CPU noise with seed + 1
    torch.Generator().manual_seed(derived)
    assert derived != derive_seed(seed, "edit", a, b + 1) and derived != derive_seed(seed, "edit", a + 1, b)


# --- the largest widget values end to end (issue: seed + k overflowed; 1000 steps gave NaN) ---------------------
POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]


@pytest.mark.parametrize("seed", [SEED_SPACE - 1, SEED_SPACE - 2])
def test_largest_seeds_run_every_loop(parts, seed):
    model, vae = parts
    with torch.inference_mode():
        result = run_generation(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, vae,
                                GenerationSettings(seed=seed, steps=4, split_ratio=0.5, policy=LoopPolicy(loops=2),
                                                   sampler_name="ddpm"), loop_negative=NEGATIVE)
        assert result.report["loops"] == 2
        edited = run_edit(model, random_context(5), vae, edit_source(torch.rand(1, 64, 64, 3), torch.ones(64, 64)),
                          POSITIVE, NEGATIVE,
                          EditSettings(seed=seed, steps=4, short_side=64, policy=LoopPolicy(loops=2)))
    assert edited.report["loops"] == 2 and bool(torch.isfinite(edited.image).all())


@pytest.mark.parametrize("steps,scheduler,mode,inversion_steps", [
    pytest.param(1000, "normal", "faithful", 50, marks=pytest.mark.slow),
    pytest.param(1000, "ddim_uniform", "faithful", 50, marks=pytest.mark.slow),
    # karras ends at sigma_min itself: the clean latent is placed there, one step fewer
    pytest.param(1000, "karras", "clean", 49, marks=pytest.mark.slow),
    (10, "karras", "clean", 0),  # one editing step, from sigma_min: nothing to invert
])
def test_extreme_step_counts_edit_finite_images(parts, steps, scheduler, mode, inversion_steps):
    model, vae = parts
    settings = EditSettings(seed=1, steps=steps, split_ratio=0.05, scheduler=scheduler, mode=mode,
                            short_side=64, sampler_name="euler", policy=LoopPolicy(loops=1))
    with torch.inference_mode():
        result = run_edit(model, random_context(5), vae, edit_source(torch.rand(1, 64, 64, 3), torch.ones(64, 64)),
                          POSITIVE, NEGATIVE, settings)
    assert bool(torch.isfinite(result.image).all()) and result.report["inversion_evaluations"] == inversion_steps

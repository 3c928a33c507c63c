"""The reference's step arithmetic, re-noise level and loop-count rule, with the numbers of docs/method.md."""
import pytest

import comfy.samplers

from tiny_models import tiny_model

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.step_counts import (appearance_start_index, ezigen_unet_calls, loop_start_index, loop_step_count,
                                 reference_renoise_timestep, reference_unet_calls, renoise_coefficients)


@pytest.fixture(scope="module")
def sd_sampling():
    return tiny_model().get_model_object("model_sampling")  # SD1.x/SD2.x's discrete EPS schedule


def test_split_indices_follow_the_reference_float_quirks():
    assert (appearance_start_index(50, 0.4), loop_start_index(50, 0.4), loop_step_count(50, 0.4)) == (30, 30, 20)
    assert appearance_start_index(50, 0.8) == 9 and loop_start_index(50, 0.8) == 10  # (1-0.8)*50 = 9.999...
    assert appearance_start_index(50, 0.9) == 4
    assert appearance_start_index(50, 0.0) == 50 and loop_step_count(50, 0.0) == 0
    assert appearance_start_index(50, 1.0) == 0 and loop_step_count(50, 1.0) == 50
    assert reference_renoise_timestep(0.4) == 400 and reference_renoise_timestep(1.0) == 999


def test_ddim_uniform_is_the_reference_timestep_list(sd_sampling):
    sigmas = comfy.samplers.calculate_sigmas(sd_sampling, "ddim_uniform", 50)
    timesteps = [round(float(sd_sampling.timestep(s))) for s in sigmas[:-1]]
    assert timesteps == list(range(981, 0, -20)) and float(sigmas[-1]) == 0.0
    assert timesteps[loop_start_index(50, 0.4)] == 381


def test_faithful_and_clean_renoise_levels(sd_sampling):
    sigmas = comfy.samplers.calculate_sigmas(sd_sampling, "ddim_uniform", 50)
    sigma_381 = float(sigmas[30])
    a, b = renoise_coefficients(sd_sampling, 0.4, sigma_381, faithful=True)
    assert (round(a, 4), round(b, 4)) == (0.9656, 1.1244)  # docs/method.md section 8: 0.96563 z + 1.12437 eps
    assert renoise_coefficients(sd_sampling, 0.4, sigma_381, faithful=False) == (1.0, pytest.approx(sigma_381))


def test_unet_call_formulas():
    assert ezigen_unet_calls(50, 0.4, 3) == 110 and reference_unet_calls(50, 0.4, 3) == 210
    assert reference_unet_calls(50, 0.4, 9) == 330


def run_policy(policy, similarities):
    done, sims = 0, []
    while True:
        go, why = policy.next_step(done, sims[-1] if sims else None)
        if not go:
            return done, why
        sims.append(similarities[done])
        done += 1


def test_autostop_rule_matches_the_reference_loop_counts():
    never = [0.5] * 20
    assert run_policy(LoopPolicy(), never)[0] == 9
    assert run_policy(LoopPolicy(), [0.999] * 20)[0] == 3  # always at least 3
    assert run_policy(LoopPolicy(), [0.5, 0.5, 0.5, 0.5, 0.995, 0.5] + never) == (5, "similarity 0.9950 >= threshold 0.99")
    assert run_policy(LoopPolicy(loops=4), [0.999] * 20) == (4, "ran the requested 4 loops")
    assert run_policy(LoopPolicy(loops=0), never)[0] == 0
    assert run_policy(LoopPolicy(min_loops=1, max_loops=2, threshold=0.3), never)[0] == 1


def test_bad_loop_settings():
    with pytest.raises(ValueError, match="min_loops \\(5\\) is larger than max_loops \\(2\\)"):
        LoopPolicy(min_loops=5, max_loops=2)
    with pytest.raises(ValueError, match="loops must be -1"):
        LoopPolicy(loops=-3)

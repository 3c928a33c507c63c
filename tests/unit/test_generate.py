"""The EZIGen Sampler's method: gate per step, UNet evaluation count, loops, modes, bad inputs."""
import pytest
import torch

import comfy.model_management
import comfy.samplers

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.generate import GenerationSettings, run_generation
from ezigen_lib.inject import SubjectInjection

from tiny_models import patched_tiny, random_context, tiny_model

POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
EMPTY_PROMPT = [[random_context(102), {}]]  # stands for CLIPTextEncode("") in loop_negative


@pytest.fixture(scope="module")
def parts():
    # start/end that would never fire: the sampler must override them
    return patched_tiny(0.0, 0.0)


def generate(parts, batch=1, model=None, latent=None, loop_negative=EMPTY_PROMPT, **kw):
    model_, vae = parts
    kw.setdefault("sampler_name", "euler")
    kw.setdefault("seed", 1)
    settings = GenerationSettings(**kw)
    samples = torch.zeros(batch, 4, 8, 8) if latent is None else latent
    with torch.inference_mode():
        return run_generation(model or model_, POSITIVE, NEGATIVE, {"samples": samples}, vae, settings,
                              loop_negative=loop_negative)


def test_gate_on_exactly_at_the_appearance_steps_and_in_every_loop_step(parts, monkeypatch):
    active = []
    original = SubjectInjection.__call__

    def spy(self, x, extra):
        out = original(self, x, extra)
        if extra["transformer_index"] == 0 and not torch.equal(out, x):
            active.append(round(float(extra["sigmas"][0]), 5))
        return out

    monkeypatch.setattr(SubjectInjection, "__call__", spy)
    result = generate(parts, steps=10, split_ratio=0.4, policy=LoopPolicy(loops=2))
    sigmas = comfy.samplers.calculate_sigmas(parts[0].get_model_object("model_sampling"), "ddim_uniform", 10)
    tail = [round(float(s), 5) for s in sigmas[6:10]]
    assert active == tail * 3  # decoupled steps 6..9, then all 4 steps of both loops
    assert result.report["appearance_start_step"] == 6 and result.report["loop_steps"] == 4


@pytest.mark.parametrize("steps,split,loops", [(8, 0.5, 2), (5, 0.4, 1), (4, 1.0, 1), (5, 0.0, 2)])
def test_unet_evaluations_are_n_plus_loops_times_loop_steps(parts, steps, split, loops):
    result = generate(parts, steps=steps, split_ratio=split, policy=LoopPolicy(loops=loops))
    loop_steps = steps - int(steps - split * steps)
    run_loops = loops if loop_steps else 0
    assert result.report["loops"] == run_loops
    assert result.report["unet_evaluations"] == steps + run_loops * loop_steps
    assert result.round_images.shape[0] == 1 + run_loops
    if not loop_steps:
        assert "no steps to refine" in result.report["warnings"][0]


def test_counts_use_the_schedule_actually_sampled(parts):
    # clean mode samples ComfyUI's ddim_uniform, which has 7 steps for 6
    result = generate(parts, steps=6, split_ratio=0.5, policy=LoopPolicy(loops=1), mode="clean")
    assert result.report["schedule_steps"] == 7 and result.report["loop_steps"] == 4
    assert result.report["unet_evaluations"] == 7 + 4
    # faithful mode samples the reference's 6 timesteps
    result = generate(parts, steps=6, split_ratio=0.5, policy=LoopPolicy(loops=1))
    assert result.report["schedule_steps"] == 6 and result.report["loop_steps"] == 3
    assert result.report["unet_evaluations"] == 6 + 3


def test_autostop_stops_on_similarity(parts):
    result = generate(parts, steps=4, split_ratio=0.5, policy=LoopPolicy(min_loops=1, max_loops=3, threshold=-1.0))
    assert result.report["loops"] == 1 and result.report["stop_reason"].startswith("similarity")
    result = generate(parts, steps=4, split_ratio=0.5, policy=LoopPolicy(min_loops=1, max_loops=3, threshold=1.0))
    assert result.report["loops"] == 3 and result.report["stop_reason"] == "reached max_loops=3"


def test_deterministic_per_seed_and_modes_differ(parts):
    kw = dict(steps=4, split_ratio=0.5, policy=LoopPolicy(loops=1), sampler_name="ddpm")
    a, b, c = generate(parts, seed=5, **kw), generate(parts, seed=5, **kw), generate(parts, seed=6, **kw)
    assert torch.equal(a.latent, b.latent) and not torch.equal(a.latent, c.latent)
    clean = generate(parts, seed=5, mode="clean", **kw)
    assert not torch.equal(a.latent, clean.latent) and clean.report["mode"] == "clean"


def test_batch_of_two(parts):
    result = generate(parts, batch=2, steps=4, split_ratio=0.5, policy=LoopPolicy(loops=1))
    assert result.latent.shape == (2, 4, 8, 8) and result.image.shape == (2, 64, 64, 3)
    assert result.round_images.shape == (4, 64, 64, 3)
    assert not torch.equal(result.latent[0], result.latent[1])


def test_interrupt_between_rounds_leaves_nothing_patched(parts, monkeypatch):
    model, vae = parts
    before = model.model_options["transformer_options"].keys()
    original = type(vae).decode

    def decode_then_interrupt(self, *a, **k):
        out = original(self, *a, **k)
        comfy.model_management.interrupt_current_processing(True)
        return out

    monkeypatch.setattr(type(vae), "decode", decode_then_interrupt)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            generate(parts, steps=4, split_ratio=0.5, policy=LoopPolicy(loops=2))
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert model.model_options["transformer_options"].keys() == before
    assert "ezigen_sigma_window" not in model.model_options["transformer_options"]


def test_bad_inputs(parts):
    with pytest.raises(ValueError, match="16-channel|4-channel latents"):
        generate(parts, latent=torch.randn(1, 16, 8, 8), steps=2)
    unpatched = generate(parts, model=tiny_model(7), steps=2, policy=LoopPolicy(loops=0))
    assert "no EZIGen patch" in unpatched.report["warnings"][0]
    with pytest.raises(ValueError, match="split_ratio"):
        GenerationSettings(seed=0, split_ratio=1.5)

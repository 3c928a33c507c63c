"""Every sampler the host offers either works in the EZIGen Sampler and EZIGen Edit or is refused before sampling
with why and what to pick (ezigen_lib/sampler_names.py); a name newer than the pack is refused, not tried."""
import pytest
import torch

import comfy.samplers
from comfy.patcher_extension import WrappersMP

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.input_checks import InputValueError
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import edit_source
from ezigen_lib.generate import GenerationSettings, run_generation
from ezigen_lib.sampler_names import CHECKED_SAMPLERS, EDIT, SAMPLER, sampler_problem
from ezigen_lib.stage_sampling import CallCounter

from tiny_models import load_pack, random_context

POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
SOURCE = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(4))
MASK = torch.zeros(48, 64)
MASK[8:32, 16:48] = 1
STEPS, SPLIT = 4, 0.5
LOOP_STEPS = STEPS - int(STEPS - SPLIT * STEPS)
NEW_NAME = "cfgpp_ud10_ab"  # in ComfyUI 0.38.1's list, unknown to the tested hosts


def test_every_sampler_of_this_host_was_checked_with_both_nodes():
    """On the tested hosts nothing is refused: every name of the lists below ran in the tests that follow."""
    assert set(comfy.samplers.KSampler.SAMPLERS) <= CHECKED_SAMPLERS
    assert [n for n in comfy.samplers.KSampler.SAMPLERS if sampler_problem(n, SAMPLER)] == []
    assert [n for n in comfy.samplers.KSAMPLER_NAMES if sampler_problem(n, EDIT)] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", comfy.samplers.KSampler.SAMPLERS)
def test_each_host_sampler_runs_the_ezigen_sampler_or_is_refused(parts, name):
    model, vae = parts
    settings = dict(seed=1, steps=STEPS, split_ratio=SPLIT, sampler_name=name, policy=LoopPolicy(loops=1))
    problem = sampler_problem(name, SAMPLER)
    if problem is not None:
        with pytest.raises(InputValueError, match="Pick ddpm"):
            GenerationSettings(**settings)
        return
    with torch.inference_mode():
        result = run_generation(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, vae,
                                GenerationSettings(**settings), loop_negative=NEGATIVE)
    assert result.image.shape == (1, 64, 64, 3) and bool(torch.isfinite(result.image).all())
    assert bool(torch.isfinite(result.latent).all()) and result.report["loops"] == 1
    assert result.report["unet_evaluations"] >= STEPS + LOOP_STEPS  # the whole schedule and the loop were walked


@pytest.mark.slow
@pytest.mark.parametrize("name", comfy.samplers.KSAMPLER_NAMES)
def test_each_host_sampler_runs_ezigen_edit_or_is_refused(parts, name):
    model, vae = parts
    settings = dict(seed=1, steps=STEPS, split_ratio=SPLIT, sampler_name=name, short_side=48,
                    policy=LoopPolicy(loops=1))
    problem = sampler_problem(name, EDIT)
    if problem is not None:
        with pytest.raises(InputValueError, match="Pick ddpm"):
            EditSettings(**settings)
        return
    with torch.inference_mode():
        result = run_edit(model, random_context(5), vae, edit_source(SOURCE, MASK), POSITIVE, NEGATIVE,
                          EditSettings(**settings))
    assert result.image.shape == SOURCE.shape and bool(torch.isfinite(result.image).all())
    assert result.report["loops"] == 1 and result.report["unet_evaluations"] >= LOOP_STEPS
    outside = MASK == 0
    assert torch.equal(result.image[0][outside], SOURCE[0][outside])  # the background is the source's
    assert not torch.equal(result.image[0][~outside], SOURCE[0][~outside])  # the region was regenerated


@pytest.fixture
def newer_core(monkeypatch):
    """The host's lists with the name ComfyUI 0.38.1 added, as a newer core offers the nodes."""
    monkeypatch.setattr(comfy.samplers, "KSAMPLER_NAMES", [*comfy.samplers.KSAMPLER_NAMES, NEW_NAME])
    monkeypatch.setattr(comfy.samplers.KSampler, "SAMPLERS", [*comfy.samplers.KSampler.SAMPLERS, NEW_NAME])


def counted(model):
    counter = CallCounter()
    model = model.clone()
    model.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, "test_counter", counter)
    return model, counter


def test_a_sampler_newer_than_the_pack_is_refused_by_both_nodes_before_sampling(parts, newer_core):
    model, vae = parts
    model, counter = counted(model)
    nodes = load_pack().nodes
    common = dict(seed=1, steps=STEPS, cfg=5.0, sampler_name=NEW_NAME, scheduler="ddim_uniform", split_ratio=SPLIT,
                  loops=1, min_loops=1, max_loops=1, sim_threshold=0.99, mode="faithful")
    # ValueError: the pack is loaded as its own package here, with its own InputValueError class
    with pytest.raises(ValueError) as sampler_refusal, torch.inference_mode():
        nodes.sampler.EZIGenSampler.execute(model=model, positive=POSITIVE, negative=NEGATIVE,
                                            latent_image={"samples": torch.zeros(1, 4, 8, 8)}, vae=vae,
                                            loop_negative=NEGATIVE, **common)
    with pytest.raises(ValueError) as edit_refusal, torch.inference_mode():
        nodes.edit.EZIGenEdit.execute(model=model, clip=None, vae=vae, image=SOURCE, mask=MASK, positive=POSITIVE,
                                      negative=NEGATIVE, inversion="dpmpp_2m", mask_mode="soft", short_side=64,
                                      output_size="source", **common)
    assert counter.calls == 0
    for refusal, node, how in ((sampler_refusal, "EZIGen Sampler", "restarts it mid-schedule"),
                               (edit_refusal, "EZIGen Edit", "steps it one interval at a time")):
        message = str(refusal.value)
        assert f"{node} does not take the sampler '{NEW_NAME}': it is newer than this release" in message, message
        assert how in message and "Pick ddpm (the reference's sampler), euler or dpmpp_2m" in message


@pytest.mark.parametrize("name,node,expected", [
    ("uni_pc", EDIT, "is not one of ComfyUI's k-diffusion samplers that can be stepped so. Pick ddpm"),
    ("no_such_sampler", SAMPLER, "has no sampler 'no_such_sampler'; pick ddpm"),
    ("no_such_sampler", EDIT, "has no sampler 'no_such_sampler'; pick ddpm"),
])
def test_a_name_the_node_cannot_use_says_why_and_what_to_pick(name, node, expected):
    settings = EditSettings if node == EDIT else GenerationSettings
    with pytest.raises(InputValueError, match=expected):
        settings(seed=1, sampler_name=name)

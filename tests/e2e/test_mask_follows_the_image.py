"""Issue 20 on the real server: a subject mask follows the image when a conditioning has an area, and under
context windows over the image's width (issue 24: with and without the causal anchor of ComfyUI >= 0.22).

A 128 x 64 image, the subject mask the left half (core SolidMask + MaskComposite), the positive prompt on the
right half (ConditioningSetArea, or ConditioningSetMask with mask bounds), cfg 1: the UNet only ever sees the
right half, where the mask is 0, so the result is the unpatched model's, bit for bit. The control puts the mask
on the right half, where the subject must act."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from comfy_host import PromptFailed, node_id, set_inputs

from ezigen_prompts import api_prompt, images_of, saver_of, small, without_patch
from test_generate import run_generate


def half_mask(prompt: dict, x: int) -> list:
    """A 128 x 64 MASK that is 1 on the 64 columns from x, made with core nodes."""
    prompt[f"95{x // 64}0"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 64}}
    prompt[f"95{x // 64}1"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt[f"95{x // 64}2"] = {"class_type": "MaskComposite", "inputs": {
        "destination": [f"95{x // 64}0", 0], "source": [f"95{x // 64}1", 0], "x": x, "y": 0, "operation": "add"}}
    return [f"95{x // 64}2", 0]


def positive_on_the_right_half(prompt: dict, sampler: str, how: str) -> None:
    inputs = prompt[node_id(prompt, sampler)]["inputs"]
    if how == "area":
        prompt["960"] = {"class_type": "ConditioningSetArea", "inputs": {
            "conditioning": inputs["positive"], "width": 64, "height": 64, "x": 64, "y": 0, "strength": 1.0}}
    else:
        prompt["960"] = {"class_type": "ConditioningSetMask", "inputs": {
            "conditioning": inputs["positive"], "mask": half_mask(prompt, 64), "strength": 1.0,
            "set_cond_area": "mask bounds"}}
    inputs["positive"] = ["960", 0]


def scenario(server, workflow: str, sampler: str, seed: int, how: str, mask_x: int) -> dict:
    prompt = small(api_prompt(server, workflow), seed)
    set_inputs(prompt, "EmptyLatentImage", width=128, height=64)
    set_inputs(prompt, sampler, seed=seed, steps=3, cfg=1.0)
    set_inputs(prompt, "EZIGenPatchUNetAttention", mask=half_mask(prompt, mask_x))
    positive_on_the_right_half(prompt, sampler, how)
    return prompt


@pytest.mark.parametrize("how", ["area", "mask bounds"])
def test_ksampler_a_mask_outside_the_area_gives_the_unpatched_image(server, seed, how):
    prompt = scenario(server, "ezigen_single_pass.json", "KSampler", seed, how, mask_x=0)
    (masked,) = images_of(server, server.run(prompt))
    (plain,) = images_of(server, server.run(without_patch(prompt, "KSampler")))
    assert masked.shape == (64, 128, 3) and np.array_equal(masked, plain)
    control = scenario(server, "ezigen_single_pass.json", "KSampler", seed, how, mask_x=64)
    (acting,) = images_of(server, server.run(control))
    assert not np.array_equal(acting, plain)  # on the right half the subject does act


def test_ezigen_sampler_a_mask_outside_the_area_gives_the_unpatched_image_and_says_so(server, seed):
    workflow, sampler = "ezigen_generate.json", "EZIGenSampler"
    prompt = scenario(server, workflow, sampler, seed, "area", mask_x=0)
    history, report = run_generate(server, prompt, seed, loops=1)
    (masked,) = images_of(server, history, saver_of(prompt, sampler, 1))
    plain_prompt = without_patch(prompt, sampler)
    plain_history, _ = run_generate(server, plain_prompt, seed, loops=1)
    (plain,) = images_of(server, plain_history, saver_of(plain_prompt, sampler, 1))
    assert masked.shape == (64, 128, 3) and np.array_equal(masked, plain)
    (subject,) = report["subjects"]
    assert subject["region"] == {"masks": 1, "share": 0.5} and subject["acted_share"] == 0.0
    assert report["warnings"] == [
        "Subject 1 acted on 0% of the image although its mask covers 50%: the model evaluated the rest without it "
        "(conditioning areas such as ConditioningSetArea or mask bounds)."]
    control = scenario(server, workflow, sampler, seed, "mask bounds", mask_x=64)
    history, report = run_generate(server, control, seed, loops=1)
    assert report["subjects"][0]["acted_share"] == 0.5 and report["warnings"] == []
    (acting,) = images_of(server, history, saver_of(control, sampler, 1))
    assert not np.array_equal(acting, plain)


def test_pack_errors_reach_clients_with_a_short_type_name(server, seed):
    prompt = small(api_prompt(server, "ezigen_single_pass.json"), seed)
    set_inputs(prompt, "EZIGenPatchUNetAttention", start_percent=0.9, end_percent=0.1)
    with pytest.raises(PromptFailed) as info:
        server.run(prompt)
    assert info.value.execution_error["exception_type"] == "ezigen.InputValueError"
    assert info.value.exception_message.startswith("start_percent (0.9) is after end_percent (0.1)")


def with_context_windows(server, prompt: dict, sampler: str, **settings) -> dict:
    """Core ContextWindowsManual between the model and `sampler`: disjoint 8-column windows over the latent's width
    (dim 3), fused flat; every other input at the host's default, `settings` where the host has them."""
    prompt = copy.deepcopy(prompt)
    inputs = prompt[node_id(prompt, sampler)]["inputs"]
    spec = server.object_info()["ContextWindowsManual"]["input"]
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    node = {name: entry[1]["default"] for name, entry in declared.items()
            if len(entry) > 1 and isinstance(entry[1], dict) and "default" in entry[1]}
    node.update(model=inputs["model"], context_length=8, context_overlap=0, context_schedule="standard_static",
                context_stride=1, closed_loop=False, fuse_method="flat", dim=3)
    node.update({k: v for k, v in settings.items() if k in declared})
    prompt["970"] = {"class_type": "ContextWindowsManual", "inputs": node}
    inputs["model"] = ["970", 0]
    return prompt


def full_mask(prompt: dict) -> list:
    prompt["9590"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 64}}
    return ["9590", 0]


def test_ksampler_a_mask_follows_context_windows_over_the_width(server, seed):
    """A 128 x 64 image in two 8-column latent windows, a left-half subject mask: the run places the mask (before
    issue 24, every ComfyUI >= 0.22 stopped it with MaskPlacementError: the anchor makes the right window's input
    9 columns wide), acts, and not everywhere; a mask of ones is the unmasked patch, bit for bit. On hosts with the
    causal anchor, with it on (the node's default) and off."""
    declared = server.object_info()["ContextWindowsManual"]["input"]
    has_fix = "causal_window_fix" in {**declared.get("required", {}), **declared.get("optional", {})}
    for fix in ((True, False) if has_fix else (None,)):
        settings = {} if fix is None else {"causal_window_fix": fix}
        base = small(api_prompt(server, "ezigen_single_pass.json"), seed + (fix is False))
        set_inputs(base, "EmptyLatentImage", width=128, height=64)
        set_inputs(base, "KSampler", seed=seed, steps=2, cfg=5.0)

        def run(prompt: dict) -> np.ndarray:
            (image,) = images_of(server, server.run(with_context_windows(server, prompt, "KSampler", **settings)))
            return image

        plain = run(without_patch(base, "KSampler"))
        unmasked = run(base)
        masked, ones = copy.deepcopy(base), copy.deepcopy(base)
        set_inputs(masked, "EZIGenPatchUNetAttention", mask=half_mask(masked, 0))
        set_inputs(ones, "EZIGenPatchUNetAttention", mask=full_mask(ones))
        masked_image = run(masked)
        assert masked_image.shape == (64, 128, 3), fix
        assert not np.array_equal(masked_image, plain) and not np.array_equal(masked_image, unmasked), fix
        assert np.array_equal(run(ones), unmasked), fix

"""workflows/ezigen_generate.json on the real server: the EZIGen Sampler with loops and autostop."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from comfy_host import PromptFailed, set_inputs, ui_workflow_errors

from ezigen_prompts import api_prompt, images_of, load_workflow, saver_of, small, use_sd15_main_model

WORKFLOW = "ezigen_generate.json"


def report_of(history) -> dict:
    texts = [t for out in history["outputs"].values() for t in out.get("text", [])]
    assert len(texts) == 1
    return json.loads(texts[0])


def run_generate(server, prompt, seed, **sampler):
    set_inputs(prompt, "EZIGenSampler", seed=seed, **sampler)
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"gen_{seed}_{nid}"
    history = server.run(prompt)
    return history, report_of(history)


def test_workflow_is_valid_against_the_server(server):
    assert ui_workflow_errors(load_workflow(WORKFLOW), server.object_info()) == []


def test_generate_sd21_with_fixed_loops(server, seed):
    prompt = small(api_prompt(server, WORKFLOW), seed)
    history, report = run_generate(server, prompt, seed, steps=5, loops=2)
    assert report["loops"] == 2 and report["unet_evaluations"] == 5 + 2 * 2
    assert report["reference_unet_evaluations"] == 3 * 5 + 2 * 2
    assert report["similarity_metric"] == "clip_vision_cosine" and len(report["similarities"]) == 2
    (result,) = images_of(server, history, saver_of(prompt, "EZIGenSampler", 1))
    rounds = images_of(server, history, saver_of(prompt, "EZIGenSampler", 2))
    assert len(rounds) == 3  # the first pass and two loops
    assert result.shape == (64, 64, 3) and np.array_equal(result, rounds[-1])
    (chart,) = images_of(server, history, saver_of(prompt, "EZIGenSampler", 4))
    assert chart.shape == (288, 512, 3) and (chart < 128).any()  # drawn, not blank


def test_generate_sd15_with_autostop(server, seed):
    prompt = small(api_prompt(server, WORKFLOW), seed)
    use_sd15_main_model(prompt)
    history, report = run_generate(server, prompt, seed, steps=5, min_loops=1, max_loops=2, sim_threshold=0.0)
    assert report["loops"] == 1 and report["stop_reason"].startswith("similarity")
    assert report["unet_evaluations"] == 5 + 2
    assert report["warnings"] == []
    (result,) = images_of(server, history, saver_of(prompt, "EZIGenSampler", 1))
    assert np.isfinite(result).all()


def test_interrupt_mid_generation_leaves_the_model_clean(server, seed):
    prompt = small(api_prompt(server, WORKFLOW), seed)
    set_inputs(prompt, "EZIGenSampler", seed=seed, steps=40, loops=6)
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 120
    while not server.is_running(prompt_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(5)  # into the sampling (the models are already loaded by the earlier tests)
    server.interrupt()
    with pytest.raises(PromptFailed) as info:
        server.wait(prompt_id, timeout=300)
    assert "execution_interrupted" in str(info.value)
    # the same graph afterwards: the patched model runs normally and the subject still matters
    history, report = run_generate(server, small(api_prompt(server, WORKFLOW), seed + 1), seed + 1, steps=3, loops=1)
    assert report["loops"] == 1 and report["warnings"] == []

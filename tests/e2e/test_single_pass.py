"""workflows/ezigen_single_pass.json on the real server: stock KSampler, real checkpoint files."""
from __future__ import annotations

import numpy as np
import pytest

from comfy_host import PromptFailed, node_id, set_inputs, ui_workflow_errors

from ezigen_prompts import SD15, api_prompt, images_of, load_workflow, small, use_sd15_main_model, without_patch

WORKFLOW = "ezigen_single_pass.json"


def run_single_pass(server, seed, strength=1.0, bypass_patch=False, steps=4):
    prompt = small(api_prompt(server, WORKFLOW), seed)
    set_inputs(prompt, "KSampler", seed=seed, steps=steps)
    set_inputs(prompt, "EZIGenPatchUNetAttention", strength=strength)
    if bypass_patch:
        prompt = without_patch(prompt, "KSampler")
    set_inputs(prompt, "SaveImage", filename_prefix=f"single_{seed}_{strength}_{bypass_patch}")
    (image,) = images_of(server, server.run(prompt))
    return image


def test_workflow_is_valid_against_the_server(server):
    assert ui_workflow_errors(load_workflow(WORKFLOW), server.object_info()) == []
    info = server.object_info()
    for node in ("EZIGenLoadEncoder", "EZIGenEncodeSubject", "EZIGenPatchUNetAttention", "EZIGenSampler"):
        assert info[node]["category"] == "EZIGen"
    assert "checkpoint-200000/model.safetensors" in info["EZIGenLoadEncoder"]["input"]["required"]["adapter_name"][1]["options"]


def test_patch_changes_the_image_and_strength_zero_does_not(server, seed):
    patched = run_single_pass(server, seed)
    plain = run_single_pass(server, seed, bypass_patch=True)
    off = run_single_pass(server, seed, strength=0.0)
    assert patched.shape == (64, 64, 3)
    assert np.abs(patched.astype(int) - plain.astype(int)).max() > 0
    assert np.array_equal(off, plain)


def test_sd15_model_with_the_sd21_encoder(server, seed):
    prompt = small(api_prompt(server, WORKFLOW), seed)
    use_sd15_main_model(prompt)
    set_inputs(prompt, "KSampler", seed=seed, steps=3)
    set_inputs(prompt, "SaveImage", filename_prefix=f"sd15_{seed}")
    (patched,) = images_of(server, server.run(prompt))
    plain_prompt = without_patch(prompt, "KSampler")
    set_inputs(plain_prompt, "SaveImage", filename_prefix=f"sd15_plain_{seed}")
    (plain,) = images_of(server, server.run(plain_prompt))
    assert np.abs(patched.astype(int) - plain.astype(int)).max() > 0


def test_sd1_text_into_the_sd21_encoder_is_a_clear_error(server, seed):
    prompt = small(api_prompt(server, WORKFLOW), seed)
    prompt["900"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}}
    subject_text = prompt[node_id(prompt, "EZIGenEncodeSubject")]["inputs"]["subject_prompt"][0]
    prompt[subject_text]["inputs"]["clip"] = ["900", 1]
    with pytest.raises(PromptFailed) as info:
        server.run(prompt)
    assert "768-wide but the encoder (SD20) expects 1024-wide" in info.value.exception_message

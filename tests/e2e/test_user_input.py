"""Issue 12 through the real server: what a user (or an attacker) sends over the API is refused with a
message that says what to do, and a replaced adapter file is loaded anew."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_host import PromptFailed, PromptRejected, set_inputs

from ezigen_prompts import ADAPTER, SD15, api_prompt, images_of, saver_of, small


def generate_prompt(server, seed, **sampler):
    prompt = small(api_prompt(server, "ezigen_generate.json"), seed)
    set_inputs(prompt, "EZIGenSampler", **{"seed": seed, "steps": 3, "loops": 1, **sampler})
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"input_{seed}_{nid}"
    return prompt


def edit_prompt(server, seed, **edit):
    prompt = small(api_prompt(server, "ezigen_edit.json"), seed)
    set_inputs(prompt, "EZIGenEdit", seed=seed, steps=4, short_side=64, **{"loops": 1, **edit})
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"input_edit_{seed}_{nid}"
    return prompt


def run_raw(server, prompt) -> dict:
    """POST the prompt as raw JSON: requests refuses to encode NaN, a browser or script may well send it."""
    with requests.Session() as http:
        http.trust_env = False
        r = http.post(f"{server.url}/prompt", data=json.dumps({"prompt": prompt, "client_id": server.client_id}),
                      headers={"Content-Type": "application/json"}, timeout=60)
    r.raise_for_status()
    return server.wait(r.json()["prompt_id"])


def failure_of(server, prompt, raw=False) -> str:
    with pytest.raises(PromptFailed) as info:
        run_raw(server, prompt) if raw else server.run(prompt)
    return info.value.exception_message


def test_nan_threshold_is_refused_before_the_run(server, seed):
    message = failure_of(server, generate_prompt(server, seed, sim_threshold=float("nan")), raw=True)
    assert message.startswith("EZIGen Sampler: sim_threshold must be a finite number, got nan")


@pytest.mark.parametrize("node,widget", [("EZIGenSampler", "mode"), ("EZIGenEdit", "mask_mode"),
                                         ("EZIGenEdit", "output_size")])
def test_unknown_option_values_are_refused(server, seed, node, widget):
    """0.3.75 lets a V3 node's unknown option through to execute, where the node refuses it; newer cores
    refuse it themselves at queue time. Either way nothing runs and the message names input and value."""
    make = generate_prompt if node == "EZIGenSampler" else edit_prompt
    try:
        server.run(make(server, seed, **{widget: "bogus"}))
    except PromptRejected as rejected:  # the host's own check (0.8.0)
        assert f"{widget}: 'bogus' not in" in str(rejected)
    except PromptFailed as failed:  # the node's check (0.3.75)
        message = failed.exception_message
        assert f"{widget} must be one of" in message and "got 'bogus'" in message
    else:
        pytest.fail(f"{node} ran with {widget} = 'bogus'")


def test_edit_work_size_is_bounded(server, seed):
    Image.fromarray(np.full((1, 4096, 3), 120, np.uint8)).save(server.base_dir / "input" / "one_row.png")
    prompt = edit_prompt(server, seed)
    prompt["970"] = {"class_type": "LoadImage", "inputs": {"image": "one_row.png"}}
    prompt["971"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 4096, "height": 1}}
    set_inputs(prompt, "EZIGenEdit", image=["970", 0], mask=["971", 0], crop="whole image")
    message = failure_of(server, prompt)
    assert "the source (1 x 4096) at short_side 64 would be edited at 64 x 262144" in message
    assert "limit of 4,194,304 pixels (2048 x 2048)" in message
    set_inputs(prompt, "EZIGenEdit", crop="around mask")  # the mask covers it all: so does the box
    message = failure_of(server, prompt)
    assert "the box around the mask (1 x 4096 source pixels) would be edited at 64 x 262144" in message
    assert "limit of 4,194,304 pixels (2048 x 2048)" in message
    assert server.running


def test_edit_names_a_clip_of_another_model(server, seed):
    prompt = edit_prompt(server, seed)
    prompt["980"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}}
    set_inputs(prompt, "EZIGenEdit", clip=["980", 1])
    message = failure_of(server, prompt)
    assert message.startswith("The CLIP input's text embedding is 768-wide but the MODEL (SD20) expects 1024-wide")


def test_a_replaced_adapter_file_is_loaded_again(server, stand_in_models, seed):
    """Same name, new content: the loader's fingerprint (path, size, mtime) makes ComfyUI run it again."""
    from ezigen_lib.checkpoint import load_adapter, save_adapter

    weights = load_adapter(stand_in_models["ezigen"])
    target = server.base_dir / "models" / "ezigen" / "replaced_adapter.safetensors"
    save_adapter(weights, target)
    prompt = generate_prompt(server, seed, loops=0)
    set_inputs(prompt, "EZIGenLoadEncoder", adapter_name="replaced_adapter.safetensors")
    saver = saver_of(prompt, "EZIGenSampler", 1)
    (before,) = images_of(server, server.run(prompt), saver)
    stronger = {k: v * 4 if k.endswith("to_out.0.weight") else v for k, v in weights.state_dict.items()}
    staged = target.with_name("staged.partial")
    save_adapter(type(weights)(state_dict=stronger, info=weights.info), staged)
    os.replace(staged, target)
    (after,) = images_of(server, server.run(prompt), saver)  # the very same prompt
    assert np.abs(after.astype(int) - before.astype(int)).max() > 0
    target.unlink()


def test_sampler_reports_an_ignored_noise_mask(server, seed):
    prompt = generate_prompt(server, seed, loops=0)
    latent = prompt[next(n for n, v in prompt.items() if v["class_type"] == "EmptyLatentImage")]
    prompt["990"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt["991"] = {"class_type": "SetLatentNoiseMask",
                     "inputs": {"samples": [next(n for n, v in prompt.items() if v is latent), 0], "mask": ["990", 0]}}
    set_inputs(prompt, "EZIGenSampler", latent_image=["991", 0])
    history = server.run(prompt)
    (text,) = [t for out in history["outputs"].values() for t in out.get("text", [])]
    assert any("carries a noise_mask" in w for w in json.loads(text)["warnings"])


def test_adapter_name_in_errors_is_relative(server, seed):
    (server.base_dir / "models" / "ezigen" / "broken_adapter.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{x")
    prompt = generate_prompt(server, seed)
    set_inputs(prompt, "EZIGenLoadEncoder", adapter_name="broken_adapter.safetensors")
    message = failure_of(server, prompt)
    assert "EZIGen adapter file 'models/ezigen/broken_adapter.safetensors'" in message
    assert str(server.base_dir) not in message and ADAPTER not in message

"""workflows/ezigen_two_subjects.json on the real server: two masked subjects, one EZIGen Sampler."""
from __future__ import annotations

import numpy as np
import pytest

from comfy_host import PromptFailed, set_inputs, ui_workflow_errors

from ezigen_prompts import api_prompt, images_of, load_workflow, saver_of, small
from test_generate import run_generate

WORKFLOW = "ezigen_two_subjects.json"


def test_workflow_is_valid_against_the_server(server):
    assert ui_workflow_errors(load_workflow(WORKFLOW), server.object_info()) == []


def test_two_subjects_each_in_its_half_are_gated_and_reported(server, seed):
    prompt = small(api_prompt(server, WORKFLOW), seed)
    patches = [n for n in prompt.values() if n["class_type"] == "EZIGenPatchUNetAttention"]
    assert len(patches) == 2 and all("mask" in n["inputs"] for n in patches)
    history, report = run_generate(server, prompt, seed, steps=5, loops=1)
    assert report["loops"] == 1 and report["unet_evaluations"] == 5 + 2
    assert report["subjects"] == [{"strength": 1.0, "images": 1, "resolution": 64,
                                   "region": {"masks": 1, "share": 0.5}, "acted_share": 0.5}] * 2
    assert report["warnings"] == []
    (result,) = images_of(server, history, saver_of(prompt, "EZIGenSampler", 1))
    assert result.shape == (64, 64, 3) and np.isfinite(result).all()


def test_a_mask_batch_that_fits_no_latent_batch_is_refused_by_name(server, seed):
    """Two masks for subject 1 but three latents: refused before sampling, naming the subject."""
    prompt = small(api_prompt(server, WORKFLOW), seed)
    set_inputs(prompt, "EmptyLatentImage", batch_size=3)
    first = next(k for k, n in prompt.items() if n["class_type"] == "EZIGenPatchUNetAttention"
                 and prompt[n["inputs"]["model"][0]]["class_type"] != "EZIGenPatchUNetAttention")
    prompt["950"] = {"class_type": "MaskToImage", "inputs": {"mask": prompt[first]["inputs"]["mask"]}}
    prompt["951"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["950", 0], "amount": 2}}
    prompt["952"] = {"class_type": "ImageToMask", "inputs": {"image": ["951", 0], "channel": "red"}}
    prompt[first]["inputs"]["mask"] = ["952", 0]
    set_inputs(prompt, "EZIGenSampler", seed=seed, steps=2, loops=0)
    with pytest.raises(PromptFailed) as info:
        server.run(prompt)
    assert "Subject 1's mask holds 2 masks but the latent batch is 3" in info.value.exception_message

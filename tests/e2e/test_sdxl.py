"""workflows/ezigen_sdxl_generate.json on a real ComfyUI server with a full-size, random-weight SDXL checkpoint
(ComfyUI detects it as SDXL) and EZIGen-SDXL adapters in upstream's layout: the shipped graph as a user runs it, at
a 64 px latent and 2 steps so that a CPU affords it (see conftest's `sdxl_server`)."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
from safetensors import safe_open

from comfy_host import node_id, set_inputs, ui_workflow_errors

from ezigen_prompts import api_prompt, images_of, load_workflow, saver_of

WORKFLOW = "ezigen_sdxl_generate.json"
SIZE = 64  # pixels: an 8x8 latent, SDXL's transformer levels at 4x4 and 2x2 tokens
# The 70 layers of ezigen-sdxl-flux.md A2, in execution order: (width, downsampling level of their grid); a layer's
# tokens at S px are (S / 8 / 2**level)**2 (4096 and 1024 at 1024 px).
DOC_LAYERS = [(640, 1)] * 4 + [(1280, 2)] * 60 + [(640, 1)] * 6


def sdxl_prompt(server, seed: int, strength: float = 1.0) -> dict:
    """The shipped workflow at SIZE px, 2 steps and one loop, plus a Save EZIGen Subject of its subject."""
    prompt = copy.deepcopy(api_prompt(server, WORKFLOW))
    set_inputs(prompt, "EZIGenEncodeSubject", resolution=SIZE, seed=seed)
    set_inputs(prompt, "EmptyLatentImage", width=SIZE, height=SIZE)
    set_inputs(prompt, "EZIGenSampler", seed=seed, steps=2, loops=1)
    set_inputs(prompt, "EZIGenPatchUNetAttention", strength=strength)
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"sdxl_{seed}_{strength}_{nid}"
    prompt["900"] = {"class_type": "EZIGenSaveSubject",
                     "inputs": {"subject": [node_id(prompt, "EZIGenEncodeSubject"), 0], "filename_prefix": f"sdxl_{seed}"}}
    return prompt


def run(server, prompt) -> tuple[np.ndarray, dict]:
    history = server.run(prompt, timeout=1200)
    (text,) = [t for out in history["outputs"].values() for t in out.get("text", []) if t.startswith("{")]
    (image,) = images_of(server, history, saver_of(prompt, "EZIGenSampler", 1))
    return image, json.loads(text)


def test_sdxl_workflow_is_valid_against_the_server(sdxl_server):
    assert ui_workflow_errors(load_workflow(WORKFLOW), sdxl_server.object_info()) == []


def test_sdxl_workflow_runs_and_the_subject_changes_the_image(sdxl_server, seed):
    patched, report = run(sdxl_server, sdxl_prompt(sdxl_server, seed))
    assert patched.shape == (SIZE, SIZE, 3) and patched.std() > 0
    assert report["loops"] == 1
    assert report["unet_evaluations"] == 2 + 2  # the first pass, then n_l = N - int(N - 0.7 N) = 2 steps
    (subject,) = report["subjects"]
    assert subject["resolution"] == SIZE and subject["strength"] == 1.0 and subject["acted_share"] > 0

    log = sdxl_server.log_text()
    # "SDXL" as a whole word ("SDXLClipModel" is the text encoder); newer hosts colour and prefix their log lines
    assert re.search(r"Requested to load SDXL\b", log), "ComfyUI did not load the checkpoint as SDXL"
    assert "model_type EPS" in log

    with safe_open(str(sdxl_server.base_dir / "models" / "ezigen_subjects" / f"sdxl_{seed}_00001.safetensors"),
                   framework="pt") as f:
        assert f.metadata()["family"] == "SDXL"
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    assert shapes == {f"features.{k}": (1, (SIZE // 8 // 2**level) ** 2, width)
                      for k, (width, level) in enumerate(DOC_LAYERS)}

    off, off_report = run(sdxl_server, sdxl_prompt(sdxl_server, seed, strength=0.0))
    assert off_report["subjects"][0]["strength"] == 0.0
    assert np.abs(patched.astype(int) - off.astype(int)).max() > 0, "the SDXL adapters did not change the image"

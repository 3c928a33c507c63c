"""Shipped workflows turned into small, fast API prompts for the random-weight stand-ins."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from comfy_host import ComfyServer, node_id, set_inputs, ui_to_api

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
SD21 = "sd21base_random.safetensors"
SD15 = "sd15_random.safetensors"
ADAPTER = "checkpoint-200000/model.safetensors"
CLIP_B32 = "clip_vit_b32_random.safetensors"


def load_workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / name).read_text())


def small(prompt: dict[str, Any], seed: int, size: int = 64) -> dict[str, Any]:
    """Stand-in names, a 64x64 latent, 64px subject encoding, a unique seed."""
    p = copy.deepcopy(prompt)
    for nid, node in p.items():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = SD21
    set_inputs(p, "EZIGenLoadEncoder", adapter_name=ADAPTER)
    for node in p.values():  # every subject (the two-subject workflow has two)
        if node["class_type"] == "EZIGenEncodeSubject":
            node["inputs"].update(resolution=64, seed=seed)
    if any(n["class_type"] == "EmptyLatentImage" for n in p.values()):
        set_inputs(p, "EmptyLatentImage", width=size, height=size)
    if any(n["class_type"] == "EZIGenLoadCLIPVision" for n in p.values()):
        set_inputs(p, "EZIGenLoadCLIPVision", clip_name=CLIP_B32)
    return p


def use_sd15_main_model(prompt: dict[str, Any]) -> None:
    """SD1.5 generates (its MODEL, CLIP for the prompts, VAE); the SD2.1 encoder keeps its own CLIP/VAE."""
    prompt["900"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}}
    subject_text = prompt[node_id(prompt, "EZIGenEncodeSubject")]["inputs"]["subject_prompt"][0]
    for nid, node in prompt.items():
        inputs = node["inputs"]
        if node["class_type"] == "CLIPTextEncode" and nid != subject_text:
            inputs["clip"] = ["900", 1]
        if node["class_type"] in ("VAEDecode", "EZIGenSampler"):
            inputs["vae"] = ["900", 2]
    set_inputs(prompt, "EZIGenPatchUNetAttention", model=["900", 0])


def without_patch(prompt: dict[str, Any], sampler: str) -> dict[str, Any]:
    """The same graph with Patch UNet Attention bypassed."""
    p = copy.deepcopy(prompt)
    patch = node_id(p, "EZIGenPatchUNetAttention")
    set_inputs(p, sampler, model=p[patch]["inputs"]["model"])
    del p[patch]
    return p


def images_of(server: ComfyServer, history: dict[str, Any], saved_by: str | None = None) -> list[np.ndarray]:
    """Images in the run's outputs, optionally only those of the SaveImage node with id `saved_by`."""
    if saved_by is not None:
        history = {**history, "outputs": {saved_by: history["outputs"][saved_by]}}
    return [np.asarray(Image.open(p).convert("RGB")) for p in server.output_images(history)]


def saver_of(prompt: dict[str, Any], class_type: str, output: int) -> str:
    """The id of the SaveImage node fed by output `output` of the one `class_type` node."""
    source = node_id(prompt, class_type)
    (saver,) = [k for k, v in prompt.items()
                if v["class_type"] == "SaveImage" and v["inputs"]["images"] == [source, output]]
    return saver


def api_prompt(server: ComfyServer, workflow_name: str) -> dict[str, Any]:
    return ui_to_api(load_workflow(workflow_name), server.object_info())

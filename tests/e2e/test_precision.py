"""fp16 and bf16 on the real server: ComfyUI's dtype flags put the UNet and the text encoder in half
precision (`--fp16-unet --fp16-text-enc`, `--bf16-...`) and the adapter file is converted to the same
dtype; generation and editing must give finite results close to the fp32 server's for the same seed.

On a CPU ComfyUI stores these weights in half precision and computes in fp32 (its unet_manual_cast), so
what differs from fp32 is the rounding of every weight; computing in half precision, as a GPU does, is
covered on tiny models in tests/unit/test_precision.py. TOLERANCE is the relative L2 error of the final
latent (measured on the random-weight stand-ins with a margin; see the README).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_host import ComfyServer, set_inputs

from ezigen_prompts import api_prompt, small

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-EZIGen"

# measured: fp16 0.0002 (generation) / 0.0003 (editing), bf16 0.0067 / 0.043
TOLERANCE = {"fp16": {"ezigen_generate.json": 0.005, "ezigen_edit.json": 0.005},
             "bf16": {"ezigen_generate.json": 0.05, "ezigen_edit.json": 0.1}}
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", params=["fp16", "bf16"])
def half_server(request, tmp_path_factory, stand_in_models):
    from demo_inputs import write_source_image, write_subject_image
    from ezigen_lib.checkpoint import load_adapter, save_adapter

    name = request.param
    base = tmp_path_factory.mktemp(f"comfy-{name}")
    adapter = save_adapter(load_adapter(stand_in_models["ezigen"]), base / f"ezigen_{name}.safetensors", HALF[name])
    server = ComfyServer(base / "comfy", custom_nodes={PACK_NAME: REPO}, extra_args=[f"--{name}-unet",
                                                                                     f"--{name}-text-enc"],
                         models={"checkpoints": [stand_in_models["sd21base"]], "ezigen": [adapter],
                                 "clip_vision": [stand_in_models["clip_b32"]]})
    with server:
        write_subject_image(server.base_dir / "input")
        write_source_image(server.base_dir / "input")
        yield name, server


def merged_prompt(server: ComfyServer, seed: int, adapter: str | None) -> dict:
    """The generation and the editing workflow as one prompt (models load once per server), each
    ending in a SaveLatent: the sampler's latent, and the edited image VAE-encoded by the same server."""
    merged = {}
    for tag, workflow in (("g", "ezigen_generate.json"), ("e", "ezigen_edit.json")):
        prompt = small(api_prompt(server, workflow), seed)
        if adapter:
            set_inputs(prompt, "EZIGenLoadEncoder", adapter_name=adapter)
        if tag == "g":
            set_inputs(prompt, "EZIGenSampler", seed=seed, steps=3, loops=1)
            node = next(n for n, v in prompt.items() if v["class_type"] == "EZIGenSampler")
            latent = [node, 0]
        else:
            set_inputs(prompt, "EZIGenEdit", seed=seed, steps=4, loops=1, short_side=64, crop="whole image")
            node = next(n for n, v in prompt.items() if v["class_type"] == "EZIGenEdit")
            prompt["994"] = {"class_type": "VAEEncode", "inputs": {"pixels": [node, 0],
                                                                   "vae": prompt[node]["inputs"]["vae"]}}
            latent = ["994", 0]
        prompt["995"] = {"class_type": "SaveLatent", "inputs": {"samples": latent,
                                                                "filename_prefix": f"latents/precision_{tag}_{seed}"}}
        for nid, node_def in prompt.items():
            if node_def["class_type"] == "SaveImage":
                node_def["inputs"]["filename_prefix"] = f"precision_{tag}_{seed}_{nid}"
            inputs = {k: [tag + v[0], v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in prompt else v
                      for k, v in node_def["inputs"].items()}
            merged[tag + nid] = {**node_def, "inputs": inputs}
    return _shared(merged)


def _shared(prompt: dict) -> dict:
    """Nodes of the editing graph identical to one of the generation graph (the loaders, the subject)
    replaced by that one, so each model is loaded once."""
    outputs = {"SaveImage", "SaveLatent", "PreviewAny"}
    while True:
        seen = {}
        for nid, node in sorted(prompt.items()):
            if node["class_type"] not in outputs:
                seen.setdefault(json.dumps([node["class_type"], node["inputs"]], sort_keys=True), nid)
        same = {nid: seen[key] for nid, node in prompt.items() if node["class_type"] not in outputs
                and seen[key := json.dumps([node["class_type"], node["inputs"]], sort_keys=True)] != nid}
        if not same:
            return prompt
        prompt = {nid: {**node, "inputs": {k: [same.get(v[0], v[0]), v[1]] if isinstance(v, list) else v
                                           for k, v in node["inputs"].items()}}
                  for nid, node in prompt.items() if nid not in same}


def final_latents(server: ComfyServer, seed: int, adapter: str | None = None) -> dict[str, torch.Tensor]:
    server.run(merged_prompt(server, seed, adapter))
    out = {}
    for tag, workflow in (("g", "ezigen_generate.json"), ("e", "ezigen_edit.json")):
        (path,) = (server.base_dir / "output" / "latents").glob(f"precision_{tag}_{seed}_*.latent")
        out[workflow] = load_file(str(path))["latent_tensor"].float()
    return out


@pytest.fixture(scope="module")
def fp32_latents(server):
    return SEED, final_latents(server, SEED)


SEED = 424242


def test_half_precision_server_is_finite_and_close_to_fp32(fp32_latents, half_server):
    name, half = half_server
    seed, want = fp32_latents
    got = final_latents(half, seed, f"ezigen_{name}.safetensors")
    for workflow in want:
        assert bool(torch.isfinite(got[workflow]).all())
        error = float((got[workflow] - want[workflow]).norm() / want[workflow].norm())
        print(f"{name} {workflow}: relative latent error {error:.4f}")
        assert error <= TOLERANCE[name][workflow]
    log = half.log_text()
    assert f"model weight dtype torch.{'float16' if name == 'fp16' else 'bfloat16'}" in log

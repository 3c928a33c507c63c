"""fp16 and bf16 on the real server: ComfyUI's dtype flags put the UNet and the text encoder in half
precision (`--fp16-unet --fp16-text-enc`, `--bf16-...`) and the adapter file is converted to the same
dtype; generation and editing must give finite results close to the fp32 server's for the same seed.

On a CPU ComfyUI stores these weights in half precision and computes in fp32 (its unet_manual_cast), so
what differs from fp32 is the rounding of every weight; computing in half precision, as a GPU does, is
covered on tiny models in tests/unit/test_precision.py. TOLERANCE is the relative L2 error of the final
latent (measured on the random-weight stand-ins with a margin; see the README).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_host import ComfyServer, set_inputs

from ezigen_prompts import api_prompt, small

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-EZIGen"

TOLERANCE = {"fp16": 0.05, "bf16": 0.25}
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


def final_latent(server: ComfyServer, workflow: str, seed: int, adapter: str | None) -> torch.Tensor:
    prompt = small(api_prompt(server, workflow), seed)
    if adapter:
        set_inputs(prompt, "EZIGenLoadEncoder", adapter_name=adapter)
    if workflow == "ezigen_generate.json":
        set_inputs(prompt, "EZIGenSampler", seed=seed, steps=3, loops=1)
        prompt["995"] = {"class_type": "SaveLatent", "inputs": {
            "samples": [next(n for n, v in prompt.items() if v["class_type"] == "EZIGenSampler"), 0],
            "filename_prefix": f"latents/precision_{seed}"}}
    else:  # the edit's result as a latent: its image VAE-encoded by the same server
        set_inputs(prompt, "EZIGenEdit", seed=seed, steps=4, loops=1, short_side=64)
        edit = next(n for n, v in prompt.items() if v["class_type"] == "EZIGenEdit")
        vae = prompt[edit]["inputs"]["vae"]
        prompt["994"] = {"class_type": "VAEEncode", "inputs": {"pixels": [edit, 0], "vae": vae}}
        prompt["995"] = {"class_type": "SaveLatent", "inputs": {"samples": ["994", 0],
                                                                "filename_prefix": f"latents/precision_{seed}"}}
    server.run(prompt)
    (path,) = (server.base_dir / "output" / "latents").glob(f"precision_{seed}_*.latent")
    return load_file(str(path))["latent_tensor"].float()


@pytest.mark.parametrize("workflow", ["ezigen_generate.json", "ezigen_edit.json"])
def test_half_precision_server_is_finite_and_close_to_fp32(server, half_server, workflow, seed):
    name, half = half_server
    want = final_latent(server, workflow, seed, None)
    got = final_latent(half, workflow, seed, f"ezigen_{name}.safetensors")
    assert bool(torch.isfinite(got).all())
    error = float((got - want).norm() / want.norm())
    print(f"{name} {workflow}: relative latent error {error:.4f}")
    assert error <= TOLERANCE[name]
    log = half.log_text()
    assert f"model weight dtype torch.{'float16' if name == 'fp16' else 'bfloat16'}" in log

"""workflows/ezigen_edit.json and ezigen_flux_to_edit.json on the real server."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfy_host import PromptFailed, node_id, set_inputs, ui_workflow_errors

from ezigen_lib.crop import Box, crop_box
from ezigen_prompts import api_prompt, images_of, load_workflow, saver_of, small

def fast(prompt, seed, **edit):
    set_inputs(prompt, "EZIGenEdit", seed=seed, steps=5, short_side=64, **{"loops": 1, **edit})
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"edit_{seed}_{nid}"
    return prompt


def report_of(history) -> dict:
    (text,) = [t for out in history["outputs"].values() for t in out.get("text", [])]
    return json.loads(text)


@pytest.mark.parametrize("workflow", ["ezigen_edit.json", "ezigen_flux_to_edit.json"])
def test_workflows_are_valid_against_the_server(server, workflow):
    assert ui_workflow_errors(load_workflow(workflow), server.object_info()) == []


def test_edit_keeps_everything_outside_the_mask(server, seed):
    prompt = fast(small(api_prompt(server, "ezigen_edit.json"), seed), seed, crop="whole image")
    history = server.run(prompt)
    (result,) = images_of(server, history, saver_of(prompt, "EZIGenEdit", 0))
    rounds = images_of(server, history, saver_of(prompt, "EZIGenEdit", 1))
    assert len(rounds) == 2 and rounds[0].shape == (64, 88, 3)  # the source, then the one round, at work size
    source = Image.open(server.base_dir / "input" / "ezigen_source.png")
    rgb, alpha = np.asarray(source.convert("RGB")), np.asarray(source)[..., 3]
    assert result.shape == rgb.shape  # back at the source's size (80 x 112), not the work size
    outside = alpha == 255
    assert np.array_equal(result[outside], rgb[outside])
    assert np.abs(result[~outside].astype(int) - rgb[~outside].astype(int)).mean() > 1
    report = report_of(history)
    assert report["unet_evaluations"] == 2 and report["inversion_evaluations"] == 2  # 5 steps, split 0.4
    assert report["reference_unet_evaluations"] == 5 + 2 and report["processing_size"] == [64, 88]
    assert report["crop"] == "whole image"


def test_large_painted_source_is_edited_around_its_mask(server, seed):
    """A 1536 x 2048 photo with a painted (transparent) 96 x 128 region, through a prompt saved before the crop
    inputs existed: the default crop edits only the box around the region, and every other pixel is the photo's."""
    height, width, region = 1536, 2048, Box(1100, 300, 96, 128)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = np.full((height, width), 255, np.uint8)
    alpha[region.slices] = 0  # LoadImage's mask is 1 - alpha: the transparent area is the region
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(server.base_dir / "input" / "large_photo.png")
    prompt = fast(small(api_prompt(server, "ezigen_edit.json"), seed), seed)
    edit = prompt[node_id(prompt, "EZIGenEdit")]
    prompt[edit["inputs"]["image"][0]]["inputs"]["image"] = "large_photo.png"
    del edit["inputs"]["crop"], edit["inputs"]["crop_context"]  # as saved before crop-and-stitch
    history = server.run(prompt)
    (result,) = images_of(server, history, saver_of(prompt, "EZIGenEdit", 0))
    box, work = crop_box(height, width, region, 64)
    report = report_of(history)
    assert report["crop"] == {"box": box.as_list(), "work_size": list(work)} and report["processing_size"] == list(work)
    assert result.shape == pixels.shape
    outside_box = np.ones((height, width), bool)
    outside_box[box.slices] = False
    assert np.array_equal(result[outside_box], pixels[outside_box])
    assert np.array_equal(result[alpha == 255], pixels[alpha == 255])  # in the box, unpainted: the photo's
    assert np.abs(result[alpha == 0].astype(int) - pixels[alpha == 0].astype(int)).mean() > 1


FLUX_HEIGHT, FLUX_WIDTH = 128, 160
FLUX_REGION = (70, 100, 24, 32)  # top, left, height, width


def test_flux_workflow_runs_end_to_end(flux_server, seed):
    """The shipped FLUX workflow on FLUX-layout stand-ins that ComfyUI's own loaders detect (UNETLoader: FLUX.1-dev,
    VAELoader: the 16-channel FLUX VAE), as it ships but for one node. ComfyUI builds FLUX's T5-XXL from a fixed
    config (24 layers, d_model 4096, 4.8 B parameters) whatever the file holds, so no small T5 stand-in can exist:
    a CLIPLoader with the DualCLIPLoader's CLIP-L file takes its place (the FLUX stand-in reads 768-d text)."""
    server = flux_server
    prompt = api_prompt(server, "ezigen_flux_to_edit.json")
    dual = node_id(prompt, "DualCLIPLoader")
    assert prompt[dual]["inputs"]["type"] == "flux"
    prompt[dual] = {"class_type": "CLIPLoader",
                    "inputs": {"clip_name": prompt[dual]["inputs"]["clip_name1"], "type": "stable_diffusion"}}
    set_inputs(prompt, "EmptySD3LatentImage", width=FLUX_WIDTH, height=FLUX_HEIGHT)
    set_inputs(prompt, "KSampler", steps=2, seed=seed)
    canvas, region = [n for n, node in prompt.items() if node["class_type"] == "SolidMask"]
    top, left, height, width = FLUX_REGION
    prompt[canvas]["inputs"].update(width=FLUX_WIDTH, height=FLUX_HEIGHT)
    prompt[region]["inputs"].update(width=width, height=height)
    set_inputs(prompt, "MaskComposite", x=left, y=top)
    flux_decode = prompt[node_id(prompt, "EZIGenEdit")]["inputs"]["image"][0]
    prompt["951"] = {"class_type": "SaveImage", "inputs": {"images": [flux_decode, 0], "filename_prefix": "flux"}}
    prompt = fast(small(prompt, seed), seed)
    try:
        history = server.run(prompt)
    finally:
        server.free_memory()  # the FLUX stand-in takes 2 GB as float32: not for the rest of the session
    (flux_image,) = images_of(server, history, "951")
    (result,) = images_of(server, history, saver_of(prompt, "EZIGenEdit", 0))
    assert "model_type FLUX" in server.log_path.read_text()  # ComfyUI's own detection called it FLUX
    assert flux_image.shape == result.shape == (FLUX_HEIGHT, FLUX_WIDTH, 3) and flux_image.std() > 1
    inside = np.zeros(result.shape[:2], bool)
    inside[top:top + height, left:left + width] = True
    assert np.array_equal(result[~inside], flux_image[~inside])
    assert np.abs(result[inside].astype(int) - flux_image[inside].astype(int)).mean() > 1
    box, work = crop_box(FLUX_HEIGHT, FLUX_WIDTH, Box(*FLUX_REGION), 64)  # crop-and-stitch, the workflow's default
    assert report_of(history)["crop"] == {"box": box.as_list(), "work_size": list(work)}
    assert box.height < FLUX_HEIGHT and box.width < FLUX_WIDTH


def test_mask_of_another_size_is_a_clear_error(server, seed):
    prompt = fast(small(api_prompt(server, "ezigen_edit.json"), seed), seed)
    prompt["960"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    set_inputs(prompt, "EZIGenEdit", mask=["960", 0])
    with pytest.raises(PromptFailed) as info:
        server.run(prompt)
    assert "mask size (64, 64) differs from the source size (80, 112)" in info.value.exception_message


def test_exceptional_prompt_construction(stand_in_models):
    """Token 7788 at every position with no position embeddings, through the SD2 text encoder."""
    import comfy.ldm.modules.attention
    import comfy.sd
    import torch

    from ezigen_lib.inversion_text import EXCEPTIONAL_TOKEN_ID, exceptional_prompt

    _, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(stand_in_models["sd21base"]), output_vae=False,
                                                          output_model=False)
    encoder = clip.cond_stage_model.clip_h
    text_model = encoder.transformer.text_model
    seen = {}
    def record_input(module, args):  # returns None: a returned value would replace the input
        seen.setdefault("x", args[0].clone())

    hook = text_model.encoder.register_forward_pre_hook(record_input)
    try:
        with torch.inference_mode():
            context = exceptional_prompt(clip)
            layers = text_model.encoder.layers
            token = text_model.embeddings.token_embedding.weight[EXCEPTIONAL_TOKEN_ID].float()
            x = token.expand(1, 77, -1).clone()
            mask = torch.full((77, 77), float("-inf")).triu(1)
            attention = comfy.ldm.modules.attention.optimized_attention_for_device(x.device, mask=True,
                                                                                   small_input=True)
            for layer in layers[:-1]:  # penultimate layer, then the final LayerNorm: SD2's text context
                x = layer(x, mask, attention)
            want = text_model.final_layer_norm(x)
    finally:
        hook.remove()
    assert context.shape == (1, 77, 1024)
    torch.testing.assert_close(seen["x"][0], token.expand(77, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(context, want.float(), atol=1e-4, rtol=1e-4)


def test_plain_photo_without_a_painted_region_says_how_to_paint_one(server, seed):
    """A photo with no alpha reaches the edit node as LoadImage's blank 64x64 mask."""
    Image.fromarray(np.full((80, 112, 3), 140, np.uint8)).save(server.base_dir / "input" / "plain_photo.png")
    prompt = fast(small(api_prompt(server, "ezigen_edit.json"), seed), seed)
    source = prompt[node_id(prompt, "EZIGenEdit")]["inputs"]["image"][0]
    prompt[source]["inputs"]["image"] = "plain_photo.png"
    with pytest.raises(PromptFailed) as info:
        server.run(prompt)
    message = info.value.exception_message
    assert "no region is painted" in message and "MaskEditor" in message and "connect a MASK" in message
    assert "differs from the source size" not in message


def test_exceptional_prompt_runs_where_the_core_runs_the_text_encoder(stand_in_models):
    """Newer cores keep text-encoder weights off the GPU and name the compute device in `execution_device`.

    Here the weights stay on the CPU and the encoder is told to run on another device ("meta", the only
    second device a CPU machine has); the prompt must be computed there, not where the weights are.
    """
    import comfy.sd
    import torch

    from ezigen_lib.inversion_text import exceptional_prompt, text_encoder_device

    _, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(stand_in_models["sd21base"]), output_vae=False,
                                                          output_model=False)
    clip.load_model()
    encoder = clip.cond_stage_model.clip_h
    assert text_encoder_device(clip) == torch.device(clip.patcher.load_device)
    encoder.execution_device = torch.device("meta")  # what set_clip_options({"execution_device": ...}) sets

    class Reached(Exception):
        pass

    seen = {}
    def stop_at_the_transformer(module, args, kwargs):
        seen["device"] = kwargs["embeds"].device
        raise Reached

    hook = encoder.transformer.register_forward_pre_hook(stop_at_the_transformer, with_kwargs=True)
    try:
        with torch.inference_mode(), pytest.raises(Reached):
            exceptional_prompt(clip)
    finally:
        hook.remove()
    assert encoder.transformer.text_model.embeddings.token_embedding.weight.device.type == "cpu"
    assert seen["device"].type == "meta"

"""EZIGen Edit on SDXL: a reduced-width SDXL that ComfyUI itself treats as SDXL (its SDXL config and model
classes, its two-tower SDXLClipModel), an adapter of random weights for that family's layers, and a subject.

The exceptional prompt runs through both text towers and gives the pooled embedding SDXL's added conditioning
takes; the inversion's conditioning carries it with the size ids, and the edit runs on the whole image and
around the mask, leaving every pixel it must not touch the source's.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.capture import encode_subject
from ezigen_lib.checkpoint import AdapterInfo
from ezigen_lib.crop import Box, crop_box
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import EditInputError, edit_source
from ezigen_lib.encoder import EZIGenEncoder, adapter_patcher
from ezigen_lib.family import UnsupportedModelError, family_of
from ezigen_lib.inject import apply_subject
from ezigen_lib.inversion_text import EXCEPTIONAL_TOKEN_ID, InversionText, exceptional_text, inversion_conditioning

from tiny_models import init_random, random_adapter_state, tiny_model, tiny_vae
from tiny_sdxl import CLIP_G_WIDTH, CLIP_L_WIDTH, tiny_sdxl, tiny_sdxl_clip

SOURCE = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(7))  # non-square
MASK = torch.zeros(1, 96, 128)
MASK[0, 30:50, 70:100] = 1.0


def encode(clip, text: str) -> list:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@pytest.fixture(scope="module")
def sdxl():
    """(patched SDXL MODEL, its CLIP, a VAE): the adapter is made for the SDXL family's layers with upstream's
    single residual; the subject is encoded with its prompt's pooled embedding."""
    model, clip, vae = tiny_sdxl(seed=3), tiny_sdxl_clip(), tiny_vae()
    family = family_of(model)
    assert family.name == "SDXL" and family.native_resolution == 1024  # ComfyUI sees an SDXL
    info = AdapterInfo(widths=family.widths, head_dim=32, base_model="tiny-sdxl", source="test", family="SDXL",
                       residual="single")
    encoder = EZIGenEncoder(model=model, name="tiny.safetensors", info=info,
                            adapter=adapter_patcher(random_adapter_state(5, widths=family.widths), info))
    subject_image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        prompt = encode(clip, "a dog")
        subject = encode_subject(encoder.model, vae, prompt[0][0], subject_image, None, 0, 64, family.widths,
                                 pooled=prompt[0][1]["pooled_output"])
    return apply_subject(model, encoder, subject, 1.0, 0.0, 1.0), clip, vae


def edit(sdxl, crop: str, positive=None, text=None):
    model, clip, vae = sdxl
    settings = EditSettings(seed=1, sampler_name="euler", steps=6, short_side=64, policy=LoopPolicy(loops=1),
                            crop=crop)
    with torch.inference_mode():
        return run_edit(model, text or exceptional_text(clip), vae, edit_source(SOURCE, MASK),
                        positive or encode(clip, "a dog on the sofa"), encode(clip, ""), settings)


def _layer_norm(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def _linear(x, state, prefix, bias=True):
    return x @ state[f"{prefix}.weight"].T + (state[f"{prefix}.bias"] if bias else 0)


def plain_clip_tower(state: dict, heads: int, act) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A CLIP text transformer written from its weights alone (HF's layout), fed token 7788 at every place with
    no position embeddings: (the hidden states after each layer, the final-LN states)."""
    x = state["text_model.embeddings.token_embedding.weight"][EXCEPTIONAL_TOKEN_ID].expand(77, -1)[None].float()
    causal = torch.full((77, 77), float("-inf")).triu(1)
    states, layer = [], 0
    while f"text_model.encoder.layers.{layer}.layer_norm1.weight" in state:
        p = f"text_model.encoder.layers.{layer}"
        h = _layer_norm(x, state, f"{p}.layer_norm1")
        q, k, v = (_linear(h, state, f"{p}.self_attn.{n}_proj").view(1, 77, heads, -1).transpose(1, 2)
                   for n in "qkv")
        weights = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + causal).softmax(-1)
        x = x + _linear((weights @ v).transpose(1, 2).reshape(1, 77, -1), state, f"{p}.self_attn.out_proj")
        x = x + _linear(act(_linear(_layer_norm(x, state, f"{p}.layer_norm2"), state, f"{p}.mlp.fc1")), state,
                        f"{p}.mlp.fc2")
        states.append(x)
        layer += 1
    return states, _layer_norm(x, state, "text_model.final_layer_norm")


def test_exceptional_prompt_on_both_towers_equals_a_plain_computation(sdxl):
    """SDXL's stock text is each tower's penultimate states without the final LN, side by side (clip_l then
    clip_g), and clip_g's projected pooled state; ComfyUI pools given embeddings at the last place."""
    _, clip, _ = sdxl
    with torch.inference_mode():
        text = exceptional_text(clip)
    wrapper = clip.cond_stage_model
    tower_l = {k.removeprefix("transformer."): v.float() for k, v in wrapper.clip_l.state_dict().items()}
    tower_g = {k.removeprefix("transformer."): v.float() for k, v in wrapper.clip_g.state_dict().items()}
    states_l, _ = plain_clip_tower(tower_l, 2, lambda a: a * torch.sigmoid(1.702 * a))  # quick_gelu
    states_g, final_g = plain_clip_tower(tower_g, 2, F.gelu)
    expected = torch.cat([states_l[-2], states_g[-2]], dim=-1)
    assert text.context.shape == (1, 77, CLIP_L_WIDTH + CLIP_G_WIDTH)
    torch.testing.assert_close(text.context, expected, rtol=1e-5, atol=1e-5)
    pooled = final_g[:, -1] @ tower_g["text_projection.weight"].T
    assert text.pooled.shape == (1, CLIP_G_WIDTH)
    torch.testing.assert_close(text.pooled, pooled, rtol=1e-5, atol=1e-5)


def _tiny_sd2_clip():
    """ComfyUI's SD2ClipModel (one tower, clip_h) narrowed to 32 wide, 3 layers."""
    import types

    import comfy.sd
    import comfy.text_encoders.sd2_clip

    target = types.SimpleNamespace(params={}, clip=comfy.text_encoders.sd2_clip.SD2ClipModel,
                                   tokenizer=comfy.text_encoders.sd2_clip.SD2Tokenizer)
    clip = comfy.sd.CLIP(target, model_options={"clip_h_model_config": {
        "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3}})
    init_random(clip.cond_stage_model, 6, std=0.1)
    return clip


def test_exceptional_prompt_on_sd2s_one_tower_equals_a_plain_computation():
    """SD2.x's text (ComfyUI's SD2ClipModel, narrowed): the penultimate states through the final LayerNorm, as the
    reference's ExceptionCLIP gives them."""
    clip = _tiny_sd2_clip()
    with torch.inference_mode():
        context = exceptional_text(clip).context
    tower = {k.removeprefix("transformer."): v.float() for k, v in clip.cond_stage_model.clip_h.state_dict().items()}
    states, _ = plain_clip_tower(tower, 2, F.gelu)
    torch.testing.assert_close(context, _layer_norm(states[-2], tower, "text_model.final_layer_norm"),
                               rtol=1e-5, atol=1e-5)


def test_the_inversion_conditioning_carries_what_sdxl_needs(sdxl):
    model, clip, _ = sdxl
    text = exceptional_text(clip)
    [[context, extras]] = inversion_conditioning(model, text, (64, 88))
    assert context is text.context and extras["pooled_output"] is text.pooled
    assert {k: extras[k] for k in ("width", "height", "target_width", "target_height", "crop_w", "crop_h")} == \
        {"width": 88, "height": 64, "target_width": 88, "target_height": 64, "crop_w": 0, "crop_h": 0}
    assert inversion_conditioning(tiny_model(), text, (64, 88)) == [[text.context, {}]]  # SD: the context alone
    with pytest.raises(UnsupportedModelError, match="pooled text embedding"):
        inversion_conditioning(model, text.context, (64, 88))


def test_sdxl_edit_on_the_whole_image(sdxl):
    result = edit(sdxl, "whole image")
    assert result.image.shape == SOURCE.shape and bool(torch.isfinite(result.image).all())
    outside = MASK[0] == 0
    assert torch.equal(result.image[0][outside], SOURCE[0][outside])
    inside = MASK[0] == 1
    assert (result.image[0][inside] - SOURCE[0][inside]).abs().mean() > 0.01
    assert result.report["inversion_evaluations"] > 0 and result.report["crop"] == "whole image"


def test_sdxl_edit_around_the_mask(sdxl):
    result = edit(sdxl, "around mask")
    box, work = crop_box(96, 128, Box(30, 70, 20, 30), 64)
    assert result.report["crop"] == {"box": box.as_list(), "work_size": list(work)}
    outside_box = torch.ones(96, 128, dtype=torch.bool)
    outside_box[box.slices] = False
    assert torch.equal(result.image[0][outside_box], SOURCE[0][outside_box])
    assert torch.equal(result.image[0][MASK[0] == 0], SOURCE[0][MASK[0] == 0])
    inside = MASK[0] == 1
    assert (result.image[0][inside] - SOURCE[0][inside]).abs().mean() > 0.01


def test_a_prompt_without_the_pooled_embedding_is_refused_by_name(sdxl):
    _, clip, _ = sdxl
    bare = [[encode(clip, "a dog")[0][0], {}]]  # e.g. a context made by a node that drops the pooled output
    with pytest.raises(EditInputError, match="positive conditioning has no pooled text embedding"):
        edit(sdxl, "whole image", positive=bare)
    with pytest.raises(UnsupportedModelError, match="pooled text embedding"):
        edit(sdxl, "whole image", text=InversionText(exceptional_text(clip).context))


def test_the_edit_node_takes_an_sdxl_checkpoint_and_refuses_an_sd_clip(sdxl):
    """The node as ComfyUI runs it: the SDXL MODEL, CLIP and VAE and prompts of that CLIP; an SD CLIP's
    inversion prompt (another text width) is refused by name."""
    from tiny_models import load_pack

    model, clip, vae = sdxl
    node = load_pack().nodes.EZIGenEdit
    widgets = dict(seed=1, steps=4, cfg=2.0, sampler_name="euler", scheduler="ddim_uniform", split_ratio=0.5,
                   loops=1, min_loops=1, max_loops=2, sim_threshold=0.99, mode="faithful", inversion="dpmpp_2m",
                   mask_mode="soft", short_side=64, output_size="source")
    with torch.inference_mode():
        image, rounds, report, _ = node.execute(model, clip, vae, SOURCE, MASK[0], encode(clip, "a dog on the sofa"),
                                                encode(clip, ""), **widgets).result
    assert image.shape == SOURCE.shape and torch.equal(image[0][MASK[0] == 0], SOURCE[0][MASK[0] == 0])
    box, work = crop_box(96, 128, Box(30, 70, 20, 30), 64)  # the node's default: around the mask
    assert json.loads(report)["crop"] == {"box": box.as_list(), "work_size": list(work)}
    sd_clip = _tiny_sd2_clip()
    # ValueError: the node raises the loaded pack's own copy of UnsupportedModelError
    with torch.inference_mode(), pytest.raises(ValueError, match=r"CLIP input's text embedding is 32-wide but the "
                                                                 r"MODEL \(SDXL\) expects 80-wide"):
        node.execute(model, sd_clip, vae, SOURCE, MASK[0], encode(clip, "a dog"), encode(clip, ""), **widgets)

"""EZIGen on ComfyUI's own SDXL (comfy.supported_models.SDXL + comfy.model_base.SDXL) at reduced width.

The expected 70-layer table, the reference key names and the text-tower forward are written here from
docs (ezigen-sdxl-flux.md A2/A3) and plain torch, not read from the pack.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ezigen_lib import convert
from ezigen_lib.adapter import AdapterSet
from ezigen_lib.capture import capture_features, encode_subject, subject_adm
from ezigen_lib.checkpoint import AdapterFileError, AdapterInfo, AdapterWeights, load_adapter, save_adapter
from ezigen_lib.encoder import load_encoder
from ezigen_lib.family import UnsupportedModelError, family_of
from ezigen_lib.inject import apply_subject
from ezigen_lib.subject_format import SubjectFileError, load_subject, require_subject_fits
from ezigen_lib.subject_saving import save_subject
from ezigen_lib.text_encoding import encode_prompts

from tiny_models import random_adapter_state, random_context, sample, tiny_model, tiny_vae
from tiny_sdxl import CLIP_G_WIDTH, CONTEXT_WIDTH, sdxl_70, tiny_sdxl_clip

# doc A2's table: (diffusers attention, ComfyUI block, layers, grid side at 1024 px, width, heads)
DOC_TABLE = [
    ("down_blocks.1.attentions.0", ("input", 4), 2, 64, 640, 10),
    ("down_blocks.1.attentions.1", ("input", 5), 2, 64, 640, 10),
    ("down_blocks.2.attentions.0", ("input", 7), 10, 32, 1280, 20),
    ("down_blocks.2.attentions.1", ("input", 8), 10, 32, 1280, 20),
    ("mid_block.attentions.0", ("middle", 0), 10, 32, 1280, 20),
    ("up_blocks.0.attentions.0", ("output", 0), 10, 32, 1280, 20),
    ("up_blocks.0.attentions.1", ("output", 1), 10, 32, 1280, 20),
    ("up_blocks.0.attentions.2", ("output", 2), 10, 32, 1280, 20),
    ("up_blocks.1.attentions.0", ("output", 3), 2, 64, 640, 10),
    ("up_blocks.1.attentions.1", ("output", 4), 2, 64, 640, 10),
    ("up_blocks.1.attentions.2", ("output", 5), 2, 64, 640, 10),
]
SDXL_ROWS = [(f"{attention}.transformer_blocks.{j}", block, j, side * side, width, heads)
             for attention, block, depth, side, width, heads in DOC_TABLE for j in range(depth)]
SDXL_PREFIXES = [row[0] for row in SDXL_ROWS]
UP_ONLY = [p for p in SDXL_PREFIXES if p.startswith("up_blocks.")]
ADAPTER_TENSORS = {"adapter.to_q.weight": "to_q.weight", "adapter.to_k.weight": "to_k.weight",
                   "adapter.to_v.weight": "to_v.weight", "adapter.to_out.0.weight": "to_out.0.weight",
                   "adapter.to_out.0.bias": "to_out.0.bias", "adapter_norm.weight": "norm.weight",
                   "adapter_norm.bias": "norm.bias"}
HEAD_DIM = 64  # SDXL's (and the reduced model's) attention heads


def text(seed: int = 0) -> torch.Tensor:
    """A random text context of the reduced SDXL's width."""
    return random_context(seed, width=CONTEXT_WIDTH)


@pytest.fixture(scope="module")
def sdxl():
    return sdxl_70(seed=3)


@pytest.fixture(scope="module")
def widths(sdxl):
    return family_of(sdxl).widths


def main_unet_state(prefixes, state, dtype=torch.float32):
    """Upstream's saved main UNet (diffusers names): the adapters at `prefixes`, learnable_weights, and frozen
    base tensors a loader must ignore."""
    out = {"learnable_weights": state["learnable_weights"].to(dtype), "conv_in.weight": torch.zeros(8, 4, 3, 3),
           "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.zeros(4, 4)}
    for k, prefix in enumerate(prefixes):
        for theirs, ours in ADAPTER_TENSORS.items():
            out[f"{prefix}.{theirs}"] = state[f"blocks.{k}.{ours}"].to(dtype)
    return out


def test_sdxl_base_has_the_docs_70_layers(sdxl):
    """SDXL-base's full unet_config on the meta device: family, blocks, widths and heads as the doc's table, and
    the reduced model's captured tokens at a 128x128 latent are the table's grids (same levels)."""
    full = family_of(sdxl_70(device="meta", model_channels=320, context_dim=2048, pooled_dim=1280))
    assert full.name == "SDXL" and full.context_dim == 2048 and len(full.layers) == 70
    got = [(layer.reference_prefix, layer.address[:2], layer.address[2], layer.width, layer.heads)
           for layer in full.layers]
    assert got == [(prefix, block, j, width, heads) for prefix, block, j, _, width, heads in SDXL_ROWS]
    assert sum(row[3] for row in SDXL_ROWS) == 102_400  # the doc's total tokens per subject
    base = sdxl.model
    latent = torch.zeros(1, 4, 128, 128)
    features = capture_features(base, latent, latent, text(), torch.device("cpu"), torch.device("cpu"),
                                torch.float32, adm=subject_adm(base, torch.zeros(1, CLIP_G_WIDTH), 1024))
    assert [f.shape[1] for f in features] == [row[3] for row in SDXL_ROWS]


def test_subject_adm_is_sdxls_size_embedding(sdxl):
    pooled = torch.randn(1, CLIP_G_WIDTH, generator=torch.Generator().manual_seed(0))
    want = sdxl.model.encode_adm(pooled_output=pooled, width=1024, height=1024, crop_w=0, crop_h=0,
                                 target_width=768, target_height=768)
    assert torch.equal(subject_adm(sdxl.model, pooled, 768), want)
    assert subject_adm(tiny_model().model, pooled, 768) is None


def _norm1_inputs_and_outputs(base, x, sigma, context, y):
    """Plain torch: forward hooks on every BasicTransformerBlock's norm1, in the order they run."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    seen = []
    hooks = [m.norm1.register_forward_hook(lambda mod, args, out: seen.append((args[0].clone(), out.clone())))
             for m in base.diffusion_model.modules() if isinstance(m, BasicTransformerBlock)]
    try:
        with torch.no_grad():
            base.apply_model(x, sigma, c_crossattn=context, y=y)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_capture_is_norm1_of_every_layer_in_run_order(sdxl):
    base = sdxl.model
    g = torch.Generator().manual_seed(5)
    latent, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    pooled, context = torch.randn(1, CLIP_G_WIDTH, generator=g), text(3)
    y = base.encode_adm(pooled_output=pooled, width=1024, height=1024, crop_w=0, crop_h=0, target_width=64,
                        target_height=64)
    sigma = base.model_sampling.sigma(torch.tensor(1.0))  # DDPM timestep 1
    seen = _norm1_inputs_and_outputs(base, latent + noise * sigma, sigma.expand(1), context, y)
    got = capture_features(base, latent, noise, context, torch.device("cpu"), torch.device("cpu"), torch.float32,
                           adm=subject_adm(base, pooled, 64))
    assert len(got) == len(seen) == 70
    for k, (feature, (_, norm1)) in enumerate(zip(got, seen)):
        torch.testing.assert_close(feature, norm1, atol=1e-5, rtol=0, msg=f"layer {k}")


def _adapter_by_hand(h1, s, sd, prefix, width, double):
    """One adapter block in plain torch (doc A3): u = LN_a(h1); O = W_o MHA(W_q u, W_k[u;s], W_v[u;s]) + b_o."""
    w = {name: sd[f"{prefix}.{name}"] for name in ("norm.weight", "norm.bias", "to_q.weight", "to_k.weight",
                                                   "to_v.weight", "to_out.0.weight", "to_out.0.bias")}
    u = F.layer_norm(h1, (width,), w["norm.weight"], w["norm.bias"], eps=1e-5)
    us = torch.cat([u, s], dim=1)
    q, k, v = u @ w["to_q.weight"].T, us @ w["to_k.weight"].T, us @ w["to_v.weight"].T
    heads = width // HEAD_DIM

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, HEAD_DIM).transpose(1, 2)

    attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(HEAD_DIM), dim=-1) @ split(v)
    out = attn.transpose(1, 2).reshape(h1.shape) @ w["to_out.0.weight"].T + w["to_out.0.bias"]
    return u + out if double else out


@pytest.mark.parametrize("residual", ["single", "double"])
def test_one_adapter_block_matches_the_docs_equations(sdxl, widths, residual):
    """The pack's adapter on the reduced SDXL's real layer inputs and subject features, against plain torch."""
    state = random_adapter_state(9, widths=widths)
    adapters = AdapterSet(widths, HEAD_DIM, residual=residual)
    adapters.load_state_dict(state)
    base = sdxl.model
    g = torch.Generator().manual_seed(6)
    latent, noise, pooled = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g), \
        torch.randn(1, CLIP_G_WIDTH, generator=g)
    features = capture_features(base, latent, noise, text(4), torch.device("cpu"), torch.device("cpu"),
                                torch.float32, adm=subject_adm(base, pooled, 64))
    for k in (3, 40):  # a 2-layer block at the first level (1 head) and a 10-layer block below (2 heads)
        h1 = features[k] * 1.5 + 0.1  # any block state of the layer's shape
        with torch.no_grad():
            sk, sv = adapters.subject_kv(k, features[k])
            got = adapters.blocks[k].residual(h1, sk, sv)
        want = _adapter_by_hand(h1, state["learnable_weights"][k] * features[k], state, f"blocks.{k}", widths[k],
                                residual == "double")
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def sdxl_files(tmp_path_factory, widths):
    """Upstream's SDXL outputs at the reduced widths: the final diffusion_pytorch_model.bin (fp16), an
    accelerate checkpoint folder, and an only_up run's file."""
    root = tmp_path_factory.mktemp("sdxl")
    state = random_adapter_state(8, widths=widths)
    final = root / "Final"
    final.mkdir()
    torch.save(main_unet_state(SDXL_PREFIXES, state, torch.float16), final / "diffusion_pytorch_model.bin")
    folder = root / "checkpoint-28000"
    folder.mkdir()
    torch.save(main_unet_state(SDXL_PREFIXES, state), folder / "diffusion_pytorch_model.bin")
    up = root / "onlyup"
    up.mkdir()
    up_state = random_adapter_state(8, widths=widths[-36:])
    torch.save(main_unet_state(UP_ONLY, up_state), up / "diffusion_pytorch_model.bin")
    return state, final / "diffusion_pytorch_model.bin", folder, up / "diffusion_pytorch_model.bin"


def test_upstreams_sdxl_outputs_convert_and_load_with_family_and_residual(tmp_path, sdxl, sdxl_files, widths):
    state, final_bin, folder, _ = sdxl_files
    for source in (final_bin, folder):
        weights = load_adapter(source)
        assert (weights.info.family, weights.info.residual, weights.info.base_model) == ("SDXL", "single",
                                                                                          "sdxl-base-1.0")
        assert weights.info.widths == widths
        for key, value in state.items():
            torch.testing.assert_close(weights.state_dict[key].float(), value.float(), atol=2e-3, rtol=1e-3)
    out, double = tmp_path / "sdxl.safetensors", tmp_path / "sdxl-double.safetensors"
    assert convert.main([str(folder), str(out)]) == 0
    assert convert.main([str(final_bin), str(double), "--residual", "double"]) == 0
    converted, other = load_adapter(out), load_adapter(double)
    assert (converted.info.family, converted.info.residual) == ("SDXL", "single")
    assert (other.info.family, other.info.residual) == ("SDXL", "double")
    assert converted.metadata["family"] == "SDXL" and converted.metadata["residual"] == "single"
    encoder = load_encoder(out, sdxl)
    assert encoder.info.residual == "single" and not encoder.adapter.model.blocks[0].double_residual
    assert load_encoder(out, sdxl, residual="double").adapter.model.blocks[0].double_residual
    assert not load_encoder(double, sdxl, residual="single").adapter.model.blocks[0].double_residual


def test_the_only_up_variant_is_refused_with_its_reason(tmp_path, sdxl, sdxl_files, capsys):
    only_up = sdxl_files[3]
    assert convert.main([str(only_up), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"'{only_up}'" in err and "only_up" in err and "first 36 subject features" in err
    with pytest.raises(AdapterFileError, match="only_up") as refused:
        load_encoder(only_up, sdxl, "models/ezigen/onlyup/diffusion_pytorch_model.bin")
    assert "'models/ezigen/onlyup/diffusion_pytorch_model.bin'" in str(refused.value)
    assert not (tmp_path / "x.safetensors").exists()


def tiny_sd(config: str, **kw):
    """The tiny SD1.x/SD2.x-layout UNet under ComfyUI's SD15 or SD20 config class (its family name)."""
    import comfy.supported_models

    model = tiny_model(**kw)
    model.model.model_config = getattr(comfy.supported_models, config)(model.model.model_config.unet_config)
    return model


@pytest.mark.parametrize("config", ["SD20", "SD15"])
def test_family_mismatch_is_refused_by_name_both_ways(tmp_path, sdxl, sdxl_files, config):
    with pytest.raises(UnsupportedModelError, match=rf"adapter is for SDXL \(70 transformer layers\) but the "
                                                     rf"encoder model is {config} \(16 transformer layers"):
        load_encoder(sdxl_files[1], tiny_sd(config))
    sd_file = tmp_path / "sd.safetensors"
    sd_prefixes = [f"down_blocks.{lvl}.attentions.{a}.transformer_blocks.0" for lvl in range(3) for a in range(2)] + \
        ["mid_block.attentions.0.transformer_blocks.0"] + \
        [f"up_blocks.{lvl}.attentions.{a}.transformer_blocks.0" for lvl in (1, 2, 3) for a in range(3)]
    sd_state = random_adapter_state(2)
    save_file({k: v.contiguous() for k, v in main_unet_state(sd_prefixes, sd_state).items()}, str(sd_file))
    assert (load_adapter(sd_file).info.family, load_adapter(sd_file).info.residual) == ("SD20", "double")
    before = dict(sdxl.model_options["transformer_options"])
    with pytest.raises(UnsupportedModelError, match=r"adapter is for SD20 \(16 transformer layers\) but the "
                                                     r"encoder model is SDXL \(70 transformer layers.*use a "
                                                     r"SD1.x/SD2.x checkpoint"):
        load_encoder(sd_file, sdxl)
    assert sdxl.model_options["transformer_options"] == before


def test_sd2_adapter_on_an_sd15_model_still_warns(tmp_path, caplog):
    weights = AdapterWeights(random_adapter_state(2), AdapterInfo(widths=tuple(w for w in family_of(
        tiny_model()).widths), head_dim=32, base_model="sd2.1-base", source="t", family="SD20"))
    save_adapter(weights, tmp_path / "a.safetensors")
    with caplog.at_level("WARNING", logger="EZIGen"):
        load_encoder(tmp_path / "a.safetensors", tiny_sd("SD15"))
    assert "trained on sd2.1-base (SD20) features but the encoder model is SD15" in caplog.text


def test_adapter_metadata_family_and_residual_are_checked(tmp_path):
    widths = family_of(tiny_model()).widths
    info = AdapterInfo(widths=widths, head_dim=32, base_model="x", source="t")
    path = save_adapter(AdapterWeights(random_adapter_state(2), info), tmp_path / "old.safetensors",
                        extra_metadata={})
    assert load_adapter(path).info == info  # family None, residual double: as files without the fields
    for field, value in (("family", "SD 20!"), ("residual", "triple")):
        bad = save_adapter(AdapterWeights(random_adapter_state(2), info), tmp_path / f"{field}.safetensors",
                           extra_metadata={field: value})
        with pytest.raises(AdapterFileError, match=f"metadata field {field}='{value[:6]}"):
            load_adapter(bad)


@pytest.fixture(scope="module")
def sdxl_run(sdxl, sdxl_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "sdxl.safetensors"
    assert convert.main([str(sdxl_files[2]), str(out), "--dtype", "fp32"]) == 0
    encoder = load_encoder(out, sdxl, name="sdxl.safetensors")
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    pooled = torch.randn(1, CLIP_G_WIDTH, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        subject = encode_subject(encoder.model, tiny_vae(), text(), image, None, 0, 64,
                                 encoder.info.widths, adapter=encoder.name, pooled=pooled)
    return encoder, subject


def test_encode_patch_and_ksampler_on_sdxl(sdxl, sdxl_run):
    encoder, subject = sdxl_run
    assert subject.family == "SDXL" and len(subject.features) == 70
    model = sdxl_70(seed=7)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    widths = {"pooled_dim": CLIP_G_WIDTH, "context_width": CONTEXT_WIDTH}
    plain = sample(model, steps=3, noise=noise, **widths)
    patched = sample(apply_subject(model, encoder, subject, 1.0, 0.0, 1.0), steps=3, noise=noise, **widths)
    off = sample(apply_subject(model, encoder, subject, 0.0, 0.0, 1.0), steps=3, noise=noise, **widths)
    assert bool(torch.isfinite(patched).all())
    assert (patched - plain).abs().max() > 1e-3
    assert torch.equal(off, plain)


def test_sdxl_needs_the_pooled_prompt(sdxl_run):
    encoder, _ = sdxl_run
    with pytest.raises(UnsupportedModelError, match="pooled text embedding"):
        encode_subject(encoder.model, tiny_vae(), text(), torch.rand(1, 64, 64, 3), None, 0, 64,
                       encoder.info.widths)


def test_a_saved_sdxl_subject_refuses_an_sd2_encoder_by_name(tmp_path, sdxl_run):
    from tiny_models import tiny_encoder

    _, subject = sdxl_run
    save_subject(tmp_path / "dog.safetensors", subject, "a dog")
    loaded, _ = load_subject(tmp_path / "dog.safetensors")
    assert loaded.family == "SDXL"
    sd2 = tiny_encoder()
    sd2.model.model.model_config = tiny_sd("SD20").model.model_config
    with pytest.raises(SubjectFileError, match=r"layout SDXL \(widths 64/128\).*encoder given has layout SD20"):
        require_subject_fits(loaded, sd2, "dog.safetensors")


def _tower_by_hand(sd: dict, prefix: str, ids: list[int], activation, final_ln: bool, layer: int | None = None):
    """A CLIP text tower in plain torch: token + position embedding, pre-LN layers with a causal mask, final
    LayerNorm; `layer`: stop after that many layers (no final LN unless `final_ln`)."""
    t = f"{prefix}.transformer.text_model"
    tokens, positions = sd[f"{t}.embeddings.token_embedding.weight"], sd[f"{t}.embeddings.position_embedding.weight"]
    x = (tokens[torch.tensor(ids)] + positions)[None]
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    count = len({k.split(".")[5] for k in sd if k.startswith(f"{t}.encoder.layers.")})
    for i in range(count if layer is None else layer):
        p = f"{t}.encoder.layers.{i}"

        def lin(name, v, p=p):
            return v @ sd[f"{p}.{name}.weight"].T + sd[f"{p}.{name}.bias"]

        h = F.layer_norm(x, x.shape[-1:], sd[f"{p}.layer_norm1.weight"], sd[f"{p}.layer_norm1.bias"])
        heads = 2
        q, k, v = (lin(f"self_attn.{a}_proj", h).reshape(1, n, heads, -1).transpose(1, 2) for a in "qkv")
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, dim=-1) @ v
        x = x + lin("self_attn.out_proj", a.transpose(1, 2).reshape(1, n, -1))
        h = F.layer_norm(x, x.shape[-1:], sd[f"{p}.layer_norm2.weight"], sd[f"{p}.layer_norm2.bias"])
        x = x + lin("mlp.fc2", activation(lin("mlp.fc1", h)))
    if final_ln:
        x = F.layer_norm(x, x.shape[-1:], sd[f"{t}.final_layer_norm.weight"], sd[f"{t}.final_layer_norm.bias"])
    return x


def test_subject_prompt_layers_on_comfyuis_sdxl_clip():
    """'final' = both towers' last layer after the final LayerNorm, concatenated, and bigG's projected pooled
    output at the end token (upstream's encoder pass); 'comfy' = the penultimate layers without it."""
    import nodes as comfy_nodes

    clip = tiny_sdxl_clip()
    text = "a photo of a dog"
    sd = {k: v.float() for k, v in clip.cond_stage_model.state_dict().items()}
    tokens = clip.tokenize(text)
    ids = {tower: [t[0] for t in tokens[key][0]] for tower, key in (("clip_l", "l"), ("clip_g", "g"))}

    def quick_gelu(a):
        return a * torch.sigmoid(1.702 * a)

    acts = {"clip_l": quick_gelu, "clip_g": F.gelu}
    final = {tw: _tower_by_hand(sd, tw, ids[tw], acts[tw], final_ln=True) for tw in acts}
    context, pooled = encode_prompts(clip, [text], "final")
    torch.testing.assert_close(context, torch.cat([final["clip_l"], final["clip_g"]], dim=-1), atol=1e-5, rtol=0)
    end = ids["clip_g"].index(49407)
    torch.testing.assert_close(pooled, final["clip_g"][:, end] @ sd["clip_g.transformer.text_projection.weight"].T,
                               atol=1e-5, rtol=0)

    penultimate = {tw: _tower_by_hand(sd, tw, ids[tw], acts[tw], final_ln=False, layer=2) for tw in acts}
    comfy_context, comfy_pooled = encode_prompts(clip, [text], "comfy")
    torch.testing.assert_close(comfy_context, torch.cat([penultimate["clip_l"], penultimate["clip_g"]], dim=-1),
                               atol=1e-5, rtol=0)
    node = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
    assert torch.equal(node[0][0], comfy_context) and torch.equal(node[0][1]["pooled_output"], comfy_pooled)
    assert torch.equal(comfy_pooled, pooled)  # the pooled output is bigG's projected one either way
    assert clip.layer_idx is None  # the CLIP given is left as it was


def test_subject_prompt_final_keeps_the_first_77_tokens_and_batches():
    clip = tiny_sdxl_clip()
    long = " ".join(["dog"] * 100)
    assert encode_prompts(clip, [long], "comfy")[0].shape[1] == 154
    context, pooled = encode_prompts(clip, [long, "a cat"], "final")
    assert context.shape == (2, 77, CONTEXT_WIDTH) and pooled.shape == (2, CLIP_G_WIDTH)
    with pytest.raises(ValueError, match="different lengths"):
        encode_prompts(clip, [long, "a cat"], "comfy")
    with pytest.raises(ValueError, match="layers must be one of comfy, final"):
        encode_prompts(clip, ["a cat"], "penultimate")


def test_the_nodes_chain_on_sdxl(sdxl_run):
    """EZIGen Subject Prompt -> Encode Subject -> Patch UNet Attention -> ComfyUI's KSampler, the nodes themselves,
    with ComfyUI's own (reduced) SDXL CLIP for both the subject and the generation prompts."""
    import nodes as comfy_nodes

    from tiny_models import load_pack

    pack = load_pack().nodes
    encoder, _ = sdxl_run
    clip = tiny_sdxl_clip()
    (prompt,) = pack.EZIGenSubjectPrompt.execute(clip=clip, text="a dog", layers="final").args
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        (subject,) = pack.EZIGenEncodeSubject.execute(encoder, tiny_vae(), prompt, image, seed=0, resolution=64).args
    model = sdxl_70(seed=7)
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a dog on the beach")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def ksampler(m):
        with torch.inference_mode():
            out = comfy_nodes.KSampler().sample(m, 1, 3, 5.0, "euler", "normal", positive, negative, latent)
        return out[0]["samples"]

    (patched,) = pack.EZIGenPatchUNetAttention.execute(model, encoder, subject, strength=1.0, start_percent=0.0,
                                                       end_percent=1.0).args
    (off,) = pack.EZIGenPatchUNetAttention.execute(model, encoder, subject, strength=0.0, start_percent=0.0,
                                                   end_percent=1.0).args
    plain = ksampler(model)
    assert subject.family == "SDXL" and len(subject.features) == 70
    assert (ksampler(patched) - plain).abs().max() > 1e-3
    assert torch.equal(ksampler(off), plain)

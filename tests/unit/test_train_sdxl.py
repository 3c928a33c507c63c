"""Training SDXL adapters: SDXL's added conditioning in both passes, the single residual, the loss goes down, the
file records family and residual and reloads into the nodes, upstream's final-layer text features."""
import json
import math

import pytest
import torch

from ezigen_lib.checkpoint import load_adapter
from ezigen_lib.training.data import HIGH_NOISE_TIMESTEPS, LOW_NOISE_TIMESTEPS

from training_data import write_training_folder

from tiny_models import init_random, tiny_trainer
from tiny_sdxl import encode_text_pooled, tiny_sdxl, tiny_sdxl_trainer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_training_folder(tmp_path_factory.mktemp("train-data"))


def size_ids(*values: int) -> torch.Tensor:
    """SDXL's size and crop ids as its UNet reads them, written out from SDXL's definition: each id a 256-wide
    sinusoidal embedding (cos half, then sin half, periods up to 10000), concatenated in order."""
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
    return torch.cat([torch.cat([torch.cos(v * freqs), torch.sin(v * freqs)]) for v in values]).float()


def test_both_passes_get_sdxl_added_conditioning_as_upstream_trains(folder, tmp_path):
    """Subject pass: pooled subject caption + ids (res, res, 0, 0, res, res); target pass: pooled caption + ids
    (1024, 1024, 0, 0, res, res) (doc A5), recorded where the UNet reads them."""
    trainer = tiny_sdxl_trainer(folder, tmp_path, batch_size=2)
    seen = []
    hook = trainer.model.model.diffusion_model.label_emb.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().float().clone()))
    batch = next(trainer.batches())
    with torch.no_grad():
        trainer.objective.loss(batch)
    hook.remove()
    assert len(seen) == 2  # the subject pass, then the target pass
    res = batch["target"].shape[1]
    subject_captions = [c for captions in batch["subject_captions"] for c in captions]
    want_subject = torch.cat([encode_text_pooled(subject_captions)[1],
                              size_ids(res, res, 0, 0, res, res).expand(len(subject_captions), -1)], dim=1)
    want_target = torch.cat([encode_text_pooled(batch["caption"])[1],
                             size_ids(1024, 1024, 0, 0, res, res).expand(2, -1)], dim=1)
    torch.testing.assert_close(seen[0], want_subject, atol=1e-4, rtol=0)  # fp32 ids up to 1024: ulp 6e-5
    torch.testing.assert_close(seen[1], want_target, atol=1e-4, rtol=0)


def test_sdxl_adapters_are_single_residual_by_default_and_double_on_request(folder, tmp_path):
    sdxl = tiny_sdxl_trainer(folder, tmp_path / "a")
    assert sdxl.family.name == "SDXL" and len(sdxl.adapters.blocks) == len(sdxl.family.layers) == 22
    assert (sdxl.info.family, sdxl.info.residual) == ("SDXL", "single")
    assert not any(b.double_residual for b in sdxl.adapters.blocks)
    assert all(tiny_sdxl_trainer(folder, tmp_path / "b", residual="double").adapters.blocks[k].double_residual
               for k in (0, 21))
    assert tiny_trainer(folder, tmp_path / "c", head_dim=32).info.residual == "double"  # SD1.x/SD2.x unchanged
    with pytest.raises(ValueError, match="expected one of double, single"):
        tiny_sdxl_trainer(folder, tmp_path / "d", residual="triple")


def test_adapters_start_as_copies_of_every_sdxl_layer(folder, tmp_path):
    """The reference's initialisation on all 22 layers of the tiny SDXL (70 on SDXL), several per SpatialTransformer."""
    trainer = tiny_sdxl_trainer(folder, tmp_path)
    unet = trainer.model.model.diffusion_model
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]  # module order = run order
    assert len(blocks) == 22
    for adapter, block in zip(trainer.adapters.blocks, blocks):
        assert torch.equal(adapter.to_q.weight, block.attn1.to_q.weight)
        assert torch.equal(adapter.to_out[0].bias, block.attn1.to_out[0].bias)
        assert torch.equal(adapter.norm.weight, block.norm1.weight)


@pytest.mark.slow
def test_sdxl_training_lowers_the_loss(folder, tmp_path):
    trainer = tiny_sdxl_trainer(folder, tmp_path, steps=30, learning_rate=3e-2, save_every=0, batch_size=2)
    batch = next(trainer.batches())

    def fixed_loss() -> float:
        torch.manual_seed(123)
        trainer.rng.seed(123)
        with torch.no_grad():
            return sum(float(trainer.objective.loss(batch)) for _ in range(6)) / 6

    before = fixed_loss()
    torch.manual_seed(0)
    for _ in range(30):
        trainer.train_step(batch)
    after = fixed_loss()
    assert after < 0.9 * before, (before, after)


def test_exported_sdxl_adapter_records_its_family_and_reloads_bit_identically(folder, tmp_path):
    from ezigen_lib.encoder import load_encoder

    trainer = tiny_sdxl_trainer(folder, tmp_path, steps=2, save_every=0)
    out = trainer.run()
    weights = load_adapter(out)
    assert (weights.metadata["family"], weights.metadata["residual"]) == ("SDXL", "single")
    assert json.loads(weights.metadata["training_settings"])["residual"] is None  # as given: the family's
    trained = {k: v.to(torch.float16) for k, v in trainer.weights().state_dict.items()}  # the export's dtype
    assert set(weights.state_dict) == set(trained)
    assert all(torch.equal(weights.state_dict[k], v) for k, v in trained.items())
    encoder = load_encoder(out, tiny_sdxl(seed=7, depths=(2, 2)))  # Load EZIGen Encoder's path: family check + adapter patcher
    loaded = encoder.adapter.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())


@pytest.mark.slow
def test_two_sdxl_processes_with_torchrun_stay_in_step(folder, tmp_path):
    from unit.test_train import run_two_processes

    ranks = run_two_processes(tmp_path, folder, "sdxl")
    assert len(ranks[0]["state"]["learnable_weights"]) == 22  # the tiny SDXL's layers
    assert load_adapter(tmp_path / "ezigen_adapter.safetensors").metadata["family"] == "SDXL"


def test_staged_timesteps_draw_each_example_in_its_range(folder, tmp_path):
    trainer = tiny_sdxl_trainer(folder, tmp_path, staged_timesteps=True)
    batch = {"timesteps": [HIGH_NOISE_TIMESTEPS, LOW_NOISE_TIMESTEPS]}
    torch.manual_seed(0)
    draws = torch.stack([trainer.objective._timesteps(batch, 2) for _ in range(3000)])
    assert (draws[:, 0].min(), draws[:, 0].max()) == (333, 999)  # COCO / YouTube-VIS: high noise only
    assert (draws[:, 1].min(), draws[:, 1].max()) == (0, 665)  # the manifest folder (Subjects200K): low noise
    assert next(trainer.batches())["timesteps"] == [LOW_NOISE_TIMESTEPS]  # what a folder example carries


def test_cli_settings_follow_the_family():
    from ezigen_lib.train import parse_args, train_settings, unet_options

    args = parse_args(["--checkpoint", "x.safetensors", "--out", "o"])
    sdxl, sd2 = train_settings(args, "SDXL"), train_settings(args, "SD20")
    assert (sdxl.text_layers, sdxl.base_model, sdxl.residual) == ("final", "sdxl", None)
    assert (sd2.text_layers, sd2.base_model) == ("comfy", "sd2.x")
    forced = train_settings(parse_args(["--checkpoint", "x", "--out", "o", "--text-layers", "comfy",
                                        "--residual", "double", "--staged-timesteps"]), "SDXL")
    assert (forced.text_layers, forced.residual, forced.staged_timesteps) == ("comfy", "double", True)
    assert unet_options(args) == {"dtype": torch.float32}  # fp32 training: an fp32 UNet, whatever the GPU
    assert unet_options(parse_args(["--checkpoint", "x", "--out", "o", "--mixed-precision", "fp16"])) == {}


# -- text features: upstream's final layers vs ComfyUI's usual ---------------------------------------------------

def tiny_sdxl_clip():
    """A ComfyUI CLIP with SDXL's two towers in miniature (ComfyUI's SDClipModel, set up as sdxl_clip.py sets up
    CLIP-L and bigG: penultimate layer, no final LayerNorm on it, bigG's projected pooled output)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip

    def tower(width: int, layers: int, pad: int):
        config = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 2,
                  "num_hidden_layers": layers, "hidden_act": "gelu", "max_position_embeddings": 77,
                  "eos_token_id": 49407, "projection_dim": width, "vocab_size": 49408}
        return dict(layer="hidden", layer_idx=-2, textmodel_json_config=config, layer_norm_hidden_state=False,
                    special_tokens={"start": 49406, "end": 49407, "pad": pad})

    class TinySDXLClip(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, model_options=model_options,
                                                     **tower(24, 3, 49407))
            self.clip_g = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, model_options=model_options,
                                                     return_projected_pooled=True, **tower(40, 4, 0))
            self.dtypes = {dtype}

    class Target:
        params, clip, tokenizer = {}, TinySDXLClip, comfy.sdxl_clip.SDXLTokenizer

    clip = comfy.sd.CLIP(Target(), model_options={"dtype": torch.float32})
    init_random(clip.cond_stage_model, 5)
    return clip


def test_final_text_layers_are_every_towers_last_layer_after_its_layernorm():
    from ezigen_lib.text_encoding import encode_prompts

    clip = tiny_sdxl_clip()
    towers = [clip.cond_stage_model.clip_l.transformer.text_model, clip.cond_stage_model.clip_g.transformer.text_model]
    outputs = {}  # cloned: ComfyUI's CLIP layers add to their input in place
    hooks = [layer.register_forward_hook(lambda m, a, out, key=(t, i): outputs.__setitem__(key, out.detach().clone()))
             for t, tower in enumerate(towers) for i, layer in enumerate(tower.encoder.layers)]
    texts = ["a photo of a dog", "a cat"]
    final, final_pooled = encode_prompts(clip, texts, "final")
    last = [towers[t].final_layer_norm(outputs[(t, len(towers[t].encoder.layers) - 1)]) for t in (0, 1)]
    comfy_context, comfy_pooled = encode_prompts(clip, texts[-1:], "comfy")
    penultimate = [outputs[(t, len(towers[t].encoder.layers) - 2)] for t in (0, 1)]
    for hook in hooks:
        hook.remove()
    assert final.shape == (2, 77, 24 + 40) and final_pooled.shape == (2, 40)
    with torch.no_grad():
        torch.testing.assert_close(final[1:], torch.cat(last, dim=-1).float())  # the second text was encoded last
        torch.testing.assert_close(comfy_context, torch.cat(penultimate, dim=-1).float())
    assert torch.equal(comfy_pooled, final_pooled[1:])  # bigG's projected pooled either way
    assert clip.layer_idx is None  # the caller's CLIP keeps ComfyUI's layer choice
    usual = torch.cat([clip.encode_from_tokens(clip.tokenize(t)) for t in texts])  # the trainer's SD2.x encoding
    assert torch.equal(encode_prompts(clip, texts, "comfy")[0], usual)


"""Injection through the stock sampler: gating, batches, CFG, clones, stacking, per-run K/V."""
import copy
import dataclasses

import pytest
import torch

from ezigen_lib.adapter import AdapterSet, BlockAdapter
from ezigen_lib.capture import encode_subject
from ezigen_lib.input_checks import InputValueError
from ezigen_lib.gate import NEVER_ON, Gate
from ezigen_lib.inject import SubjectInjection, apply_subject, gate_subjects
from ezigen_lib.placement import Placement
from ezigen_lib.family import UnsupportedModelError, family_of

from tiny_models import random_context, sample, tiny_encoder, tiny_flux, tiny_model, tiny_sdxl_like, tiny_vae


@pytest.fixture(scope="module")
def setup():
    encoder = tiny_encoder()
    with torch.inference_mode():
        subject = encode_subject(encoder.model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3), None, 0, 64,
                                 encoder.info.widths)
    model = tiny_model(seed=7)
    return model, encoder, subject


def patch(setup, strength=1.0, start=0.0, end=1.0, model=None):
    base, encoder, subject = setup
    return apply_subject(model or base, encoder, subject, strength, start, end)


def test_strength_zero_is_identical_and_strength_one_differs(setup):
    plain = sample(setup[0], seed=3)
    assert torch.equal(sample(patch(setup, strength=0.0), seed=3), plain)
    assert (sample(patch(setup), seed=3) - plain).abs().max() > 1e-3


@pytest.fixture
def adapter_calls(monkeypatch):
    """Records, per adapter evaluation, the block's transformer index and the sampling sigma."""
    calls = []
    original = SubjectInjection.__call__

    def spy(self, x, extra):
        out = original(self, x, extra)
        if not torch.equal(out, x):
            calls.append((extra["transformer_index"], float(extra["sigmas"].max())))
        return out

    monkeypatch.setattr(SubjectInjection, "__call__", spy)
    return calls


def test_gate_follows_percent_on_ddim_uniform(setup, adapter_calls):
    model = patch(setup, start=0.6, end=1.0)
    sample(model, steps=10, cfg=1.0)
    sigmas = model.get_model_object("model_sampling").sigmas
    active_sigmas = sorted({s for _, s in adapter_calls}, reverse=True)
    # ddim_uniform, 10 steps: t = 901, 801, ..., 1; EZIGen split 0.4 -> the last 4 steps (t <= 381 region)
    assert active_sigmas == pytest.approx([float(sigmas[t]) for t in (301, 201, 101, 1)], rel=1e-5)
    assert len(adapter_calls) == 4 * 16
    assert [k for k, _ in adapter_calls[:16]] == list(range(16))


def test_gate_window_end(setup, adapter_calls):
    sample(patch(setup, start=0.0, end=0.5), steps=10, cfg=1.0)
    assert len({s for _, s in adapter_calls}) == 5  # t = 901 ... 501


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_batches_and_cfg_match_single_samples(setup, batch, cfg):
    model = patch(setup)
    noise = torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(batch))
    together = sample(model, steps=4, cfg=cfg, noise=noise)
    assert torch.isfinite(together).all()
    for i in range(batch):
        alone = sample(model, steps=4, cfg=cfg, noise=noise[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-3, rtol=1e-3)
    assert (together - sample(setup[0], steps=4, cfg=cfg, noise=noise)).abs().max() > 1e-3


def test_mixed_sigmas_in_one_batch_gate_per_sample(setup):
    base, encoder, subject = setup
    injection = SubjectInjection(encoder.adapter, family_of(base), subject, 1.0,
                                 Gate.from_percents(base.get_model_object("model_sampling"), 0.0, 1.0), Placement(None))
    x = torch.randn(4, 16, 64)  # 2 latents x (cond, uncond)
    out = injection.with_window((1.0, 0.0))(x, {"transformer_index": 0, "block": ("input", 1), "block_index": 0,
                                                "sigmas": torch.tensor([5.0, 0.5]), "attn_precision": None})
    changed = [(out[i] - x[i]).abs().max().item() > 0 for i in range(4)]
    assert changed == [False, True, False, True]


def test_input_model_untouched_and_clones_share_not_copy(setup):
    base = setup[0]
    before = copy.copy(base.model_options["transformer_options"])
    patched = patch(setup)
    assert base.model_options["transformer_options"] == before
    injection = patched.model_options["transformer_options"]["patches"]["middle_patch"][0]
    clone = patched.clone()
    assert clone.model_options["transformer_options"]["patches"]["middle_patch"][0] is injection
    assert copy.deepcopy(injection) is injection
    assert injection.models() == [setup[1].adapter]


def test_stacks_with_itself_and_with_other_attention_patches(setup):
    base, encoder, subject = setup
    seen = []

    def other_patch(x, extra):
        seen.append(extra["transformer_index"])
        return x * 1.01

    with_other = base.clone()
    with_other.set_model_patch(other_patch, "middle_patch")
    first = patch(setup, model=with_other)
    second = apply_subject(first, encoder, subject, 0.5, 0.0, 1.0)
    assert len(second.model_options["transformer_options"]["patches"]["middle_patch"]) == 3
    out_two = sample(second, steps=2, cfg=1.0)
    assert seen[:16] == list(range(16))
    out_one = sample(first, steps=2, cfg=1.0)
    assert (out_two - out_one).abs().max() > 1e-4
    assert len(first.model_options["transformer_options"]["patches"]["middle_patch"]) == 2


def test_subject_kv_computed_once_per_run_and_released(setup, monkeypatch):
    counted = []
    original = AdapterSet.subject_kv
    monkeypatch.setattr(AdapterSet, "subject_kv", lambda self, slot, f: counted.append(slot) or original(self, slot, f))
    residuals = []
    original_residual = BlockAdapter.residual
    monkeypatch.setattr(BlockAdapter, "residual", lambda self, *a, **k: residuals.append(1) or original_residual(self, *a, **k))
    model = patch(setup)
    sample(model, steps=5, cfg=4.0)
    assert sorted(counted) == list(range(16))  # once per slot for the whole run
    assert len(residuals) == 5 * 16
    injection = model.model_options["transformer_options"]["patches"]["middle_patch"][0]
    assert injection.kv.cache == {}  # dropped after the run
    sample(model, steps=2, cfg=4.0, seed=1)
    assert len(counted) == 32


def test_patch_and_encoder_follow_the_cores_model_protocols(setup):
    """The core collects a patch's models() to load with the UNet and calls cleanup() on what it loaded;
    the encoder bundle lists the patchers it holds the same way."""
    import comfy.model_management
    import comfy.sampler_helpers

    _, encoder, _ = setup
    model = patch(setup)
    (injection,) = model.model_options["transformer_options"]["patches"]["middle_patch"]
    assert model.model_patches_models() == [encoder.adapter]
    assert encoder.models() == [encoder.model, encoder.adapter]
    comfy.model_management.load_models_gpu(encoder.models())
    assert all(comfy.model_management.loaded_models().count(m) == 1 for m in encoder.models())
    with torch.inference_mode():
        injection.kv.get(3, torch.device("cpu"), torch.float32)
    assert len(injection.kv.cache) == 1
    comfy.sampler_helpers.cleanup_additional_models([injection])  # what the core does after sampling
    assert injection.kv.cache == {}


@pytest.mark.parametrize("make,message", [
    (lambda: tiny_model(model_channels=128), "has transformer widths \\[128, 256, 512\\] but the EZIGen adapter"),
    (tiny_sdxl_like, "EZIGen adapter is for a UNet of 16 transformer layers but the model to patch is TinySD \\(22 "
                     "transformer layers in 11 blocks of depths \\[2\\]\\)"),
    (tiny_flux, "Flux model, which has no SD-style UNet"),
])
def test_unsupported_models_are_refused_before_patching(setup, make, message):
    _, encoder, subject = setup
    model = make()
    with pytest.raises(UnsupportedModelError, match=message):
        apply_subject(model, encoder, subject, 1.0, 0.0, 1.0)
    assert "patches" not in model.model_options["transformer_options"]


def test_attention_precision_reaches_the_adapter_attention(setup, monkeypatch):
    import comfy.ldm.modules.attention as attention

    seen = []
    original = attention.optimized_attention
    monkeypatch.setattr(attention, "optimized_attention",
                        lambda *a, **k: seen.append(k.get("attn_precision")) or original(*a, **k))
    base, encoder, subject = setup
    injection = SubjectInjection(encoder.adapter, family_of(base), subject, 1.0,
                                 Gate.from_percents(base.get_model_object("model_sampling"), 0.0, 1.0), Placement(None))
    injection(torch.randn(1, 16, 64), {"transformer_index": 0, "block": ("input", 1), "block_index": 0, "sigmas": torch.tensor([0.5]),
                                       "attn_precision": torch.float32})
    assert seen == [torch.float32]


def test_gating_a_clone_leaves_the_patched_model_as_it_was(setup):
    """The Sampler's and Edit's gate (`gate_subjects`) acts on a clone: the user's patched MODEL keeps its
    percents, the clone's subject follows the window and shares the per-run cache (one release clears it)."""
    patched = patch(setup, start=0.2, end=0.9)
    original = patched.model_options["transformer_options"]["patches"]["middle_patch"][0]
    gated = gate_subjects(patched, NEVER_ON)
    windowed = gated.model_options["transformer_options"]["patches"]["middle_patch"][0]
    assert patched.model_options["transformer_options"]["patches"]["middle_patch"][0] is original
    assert original.gate.window is None and windowed.gate.window == NEVER_ON and windowed is not original
    assert windowed.kv.cache is original.kv.cache
    x = torch.randn(2, 16, 64)
    options = {"transformer_index": 0, "block": ("input", 1), "block_index": 0, "sigmas": torch.tensor([1.0]), "attn_precision": None}
    assert torch.equal(windowed(x, options), x)  # never on
    assert not torch.equal(original(x, options), x)  # sigma 1.0 lies in the percents' window


def test_a_subject_from_an_encoder_of_another_family_is_refused(setup):
    """Features of an SD1.5 encoder have the SD2.1 widths: only the recorded family tells them apart."""
    base, encoder, subject = setup
    assert subject.family == "TinySD"
    foreign = dataclasses.replace(subject, family="SD15", adapter="ezigen_sd15.safetensors")
    with pytest.raises(InputValueError, match="encoded by a SD15 encoder .adapter 'ezigen_sd15.safetensors'. but this "
                                              "encoder is TinySD"):
        apply_subject(base, encoder, foreign, 1.0, 0.0, 1.0)
    apply_subject(base, encoder, dataclasses.replace(subject, family=None), 1.0, 0.0, 1.0)  # unknown: allowed

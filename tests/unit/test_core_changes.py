"""No silent degradation on a changed core: each core detail the pack relies on is taken away from a real call and
the run must stop with a message naming the piece and the ComfyUI version, or, where a documented fallback
exists, say so once in the log and in the report (ezigen_lib/core_details.py)."""
import contextlib
import logging

import pytest
import torch

import comfy.sd
from comfy.ldm.models.autoencoder import AutoencoderKL, DiagonalGaussianRegularizer

from ezigen_lib import core_details
from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.capture import FeatureRecorder, encode_subject, subject_sigma
from ezigen_lib.core_details import CoreChangedError, comfyui_version
from ezigen_lib.latent_views import add_view_wrappers
from ezigen_lib.generate import GenerationSettings, run_generation
from ezigen_lib.host import comfy_version
from ezigen_lib.family import family_of
from ezigen_lib.gate import NO_SCHEDULE, Gate
from ezigen_lib.inject import SubjectInjection, apply_subject
from ezigen_lib.placement import Placement
from ezigen_lib.regions import NO_ACTIVATIONS_SHAPE
from ezigen_lib.rounds import plan_loops
from ezigen_lib.training.data import FolderDataset
from ezigen_lib.training.trainer import Trainer, TrainSettings
from ezigen_lib.vae_sample import encode_sample, no_posterior_note

from training_data import write_training_folder

from tiny_models import init_random, random_context, sample, tiny_encoder, tiny_model, tiny_vae
from tiny_models import encode_text

VERSION = ".".join(map(str, comfy_version()))  # read from the host's comfyui_version.py as text
POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]


@contextlib.contextmanager
def core_changed(piece: str):
    with pytest.raises(CoreChangedError) as info:
        yield
    message = str(info.value)
    assert piece in message and f"which ComfyUI {VERSION} does not provide" in message, message


def test_the_version_is_the_hosts():
    assert comfyui_version() == VERSION


@pytest.fixture(scope="module")
def setup():
    encoder = tiny_encoder()
    with torch.inference_mode():
        subject = encode_subject(encoder.model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3), None, 0, 64,
                                 encoder.info.widths)
    return tiny_model(seed=7), encoder, subject


@pytest.fixture(scope="module")
def block_call(setup):
    """What the core hands a middle patch in a real run: x and extra_options of transformer block 0 in a stock
    sampling step of 2 latents with CFG, on a model carrying the wrappers a subject patch adds (latent_views.py)."""
    seen = []

    def record(x, extra):
        if extra["transformer_index"] == 0 and not seen:
            seen.append((x.clone(), dict(extra)))
        return x

    model = setup[0].clone()
    add_view_wrappers(model)
    model.set_model_patch(record, "middle_patch")
    sample(model, steps=1, batch=2)
    return seen[0]


def injection(setup, region=None):
    base, encoder, subject = setup
    return SubjectInjection(encoder.adapter, family_of(base), subject, 1.0,
                            Gate.from_percents(base.get_model_object("model_sampling"), 0.0, 1.0), Placement(region))


def without(options: dict, *pieces: str) -> dict:
    return {k: v for k, v in options.items() if k not in pieces}


def test_the_real_block_call_carries_every_detail(setup, block_call):
    x, options = block_call
    assert {"transformer_index", "block", "block_index", "sigmas", "sample_sigmas", "cond_or_uncond", "original_shape",
            "activations_shape"} <= set(options)
    with torch.inference_mode():
        assert not torch.equal(injection(setup, torch.ones(2, 8, 8))(x, options), x)


@pytest.mark.parametrize("piece", ["block", "block_index", "sigmas"])
def test_a_block_detail_taken_away_stops_the_injection(setup, block_call, piece):
    x, options = block_call
    with core_changed(f"transformer_options['{piece}']"), torch.inference_mode():
        injection(setup)(x, without(options, piece))


def test_a_block_counted_another_way_stops_the_injection(setup, block_call):
    x, options = block_call
    with core_changed("transformer_index 7 at block ('output', 3) (ComfyUI gave transformer_index 0)"), \
            torch.inference_mode():
        injection(setup)(x, {**options, "block": ("output", 3)})
    with core_changed("block ('output', 0) layer 0 among the 16 transformer layers"), torch.inference_mode():
        injection(setup)(x, {**options, "block": ("output", 0)})


def test_one_mask_per_latent_needs_cond_or_uncond(setup, block_call):
    x, options = block_call
    with core_changed("transformer_options['cond_or_uncond']"), torch.inference_mode():
        injection(setup, torch.ones(2, 8, 8))(x, without(options, "cond_or_uncond"))
    with torch.inference_mode():  # one mask for the whole batch does not need it
        injection(setup, torch.ones(1, 8, 8))(x, without(options, "cond_or_uncond"))


def test_the_mask_grid_needs_original_shape_when_activations_shape_is_gone(setup, block_call):
    x, options = block_call
    region = injection(setup, torch.ones(1, 8, 8))
    with core_changed("transformer_options['original_shape']"), torch.inference_mode():
        region(x, without(options, "activations_shape", "original_shape"))
    with core_details.fallback_notes() as notes, torch.inference_mode():  # the documented fallback: the latent's size
        out = region(x, without(options, "activations_shape"))
    assert torch.equal(out, region(x, options)) and notes == [NO_ACTIVATIONS_SHAPE]


def test_the_encoder_capture_needs_the_block_details(block_call):
    x, options = block_call
    recorder = FeatureRecorder(family_of(tiny_model()), torch.device("cpu"))
    for piece in ("block", "block_index"):
        with core_changed(f"transformer_options['{piece}']"):
            recorder(x, None, None, without(options, piece))
    with core_changed("transformer_index 6 at block ('middle', 0)"):
        recorder(x, None, None, {**options, "block": ("middle", 0)})


def stripping(*pieces: str):
    """A middle patch run before the subject's that hides `pieces` from it: the block as a core without them."""
    def strip(x, extra):
        for piece in pieces:
            extra.pop(piece, None)
        return x

    return strip


def test_a_fallback_is_logged_once_and_listed_in_every_report(setup, caplog, monkeypatch):
    """activations_shape gone (a region is placed from the latent size) and a VAE without a posterior (TAESD in
    faithful mode): both runs finish and both reports list both fallbacks; the log says each once."""
    base, encoder, subject = setup
    monkeypatch.setattr(core_details, "_logged", set())
    stripped = base.clone()
    stripped.set_model_patch(stripping("activations_shape"), "middle_patch")
    model = apply_subject(stripped, encoder, subject, 1.0, 0.0, 1.0, torch.ones(1, 8, 8))
    settings = GenerationSettings(seed=1, steps=2, sampler_name="euler", policy=LoopPolicy(loops=1))
    expected = sorted([NO_ACTIVATIONS_SHAPE, no_posterior_note(tiny_vae())])
    with caplog.at_level(logging.WARNING, logger="EZIGen"):
        for _ in range(2):
            with torch.inference_mode():
                result = run_generation(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, tiny_vae(),
                                        settings, loop_negative=NEGATIVE)
            assert sorted(result.report["core_fallbacks"]) == expected
    logged = [r.getMessage() for r in caplog.records]
    assert [logged.count(f"EZIGen: {note}") for note in expected] == [1, 1]


def test_a_report_lists_no_fallback_on_this_core(setup):
    base, encoder, subject = setup
    model = apply_subject(base, encoder, subject, 1.0, 0.0, 1.0, torch.ones(1, 8, 8))
    settings = GenerationSettings(seed=1, steps=2, sampler_name="euler", policy=LoopPolicy(loops=1), mode="clean")
    with torch.inference_mode():
        result = run_generation(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, tiny_vae(), settings,
                                loop_negative=NEGATIVE)
    assert result.report["core_fallbacks"] == []


def test_without_the_whole_schedule_the_stock_sampler_path_gates_by_noise_level_and_says_so(setup, caplog,
                                                                                             monkeypatch):
    base, encoder, subject = setup
    monkeypatch.setattr(core_details, "_logged", set())
    stripped = base.clone()
    stripped.set_model_patch(stripping("sample_sigmas"), "middle_patch")
    model = apply_subject(stripped, encoder, subject, 1.0, 0.6, 1.0)
    with caplog.at_level(logging.WARNING, logger="EZIGen"), core_details.fallback_notes() as notes:
        sample(model, steps=3)
    assert notes == [NO_SCHEDULE]
    assert [r.getMessage() for r in caplog.records].count(f"EZIGen: {NO_SCHEDULE}") == 1


# -- the VAE posterior hook -----------------------------------------------------------------------


def tiny_kl_vae(seed: int = 3):
    """A real ComfyUI KL VAE (AutoencoderKL with its DiagonalGaussianRegularizer) in miniature."""
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    module = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    init_random(module, seed, std=0.02)
    return comfy.sd.VAE(sd=module.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})


PIXELS = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))


def test_the_posterior_hook_samples_a_seeded_latent():
    vae = tiny_kl_vae()
    with torch.inference_mode():
        mean, first, again = vae.encode(PIXELS), encode_sample(vae, PIXELS, 1), encode_sample(vae, PIXELS, 1)
    assert torch.equal(first, again) and not torch.equal(first, mean)


def test_an_encode_that_no_longer_runs_the_regularizer_is_a_changed_core(monkeypatch):
    vae = tiny_kl_vae()
    model = vae.first_stage_model

    def encode_without_regularizer(x, *args, **kwargs):  # the posterior's mean, as a changed core might compute it
        return torch.chunk(model.quant_conv(model.encoder(x)), 2, dim=1)[0]

    monkeypatch.setattr(model, "encode", encode_without_regularizer)
    with core_changed("VAE.encode calling the KL VAE's DiagonalGaussianRegularizer"), torch.inference_mode():
        encode_sample(vae, PIXELS, 1)


def test_a_kl_vae_without_its_regularizer_is_a_changed_core(monkeypatch):
    vae = tiny_kl_vae()
    monkeypatch.delattr(vae.first_stage_model, "regularization")
    with core_changed("AutoencoderKL.regularization"), torch.inference_mode():
        encode_sample(vae, PIXELS, 1)


def test_a_renamed_regularizer_is_a_changed_core(monkeypatch):
    vae = tiny_kl_vae()
    renamed = type("GaussianPosterior", (DiagonalGaussianRegularizer,), {})
    monkeypatch.setattr(vae.first_stage_model, "regularization", renamed())
    with core_changed("this VAE's regularizer is GaussianPosterior"), torch.inference_mode():
        encode_sample(vae, PIXELS, 1)


def test_a_vae_without_a_posterior_is_the_documented_fallback():
    vae = tiny_vae()  # TAESD
    with core_details.fallback_notes() as notes, torch.inference_mode():
        latent = encode_sample(vae, PIXELS, 1)
        assert torch.equal(latent, vae.encode(PIXELS))
    assert notes == [no_posterior_note(vae)] and "TAESD" in notes[0]


# -- model_sampling -------------------------------------------------------------------------------


class ChangedSampling:
    """The host's own model_sampling with one attribute taken away (a core that renamed it)."""

    def __init__(self, real, missing: str):
        self._real, self._missing = real, missing

    def __getattr__(self, name):
        if name == self._missing:
            raise AttributeError(name)
        return getattr(self._real, name)


def test_patching_needs_percent_to_sigma(setup):
    base, encoder, subject = setup
    changed = base.clone()
    changed.add_object_patch("model_sampling", ChangedSampling(base.get_model_object("model_sampling"),
                                                                "percent_to_sigma"))
    with core_changed("model_sampling.percent_to_sigma"):
        apply_subject(changed, encoder, subject, 1.0, 0.6, 1.0)


def test_encoding_needs_sigma(setup):
    with core_changed("model_sampling.sigma"):
        subject_sigma(ChangedSampling(setup[0].get_model_object("model_sampling"), "sigma"))


@pytest.mark.parametrize("missing", ["sigma", "timestep", "sigma_min"])
def test_the_schedule_needs_its_model_sampling_attributes(setup, missing):
    settings = GenerationSettings(seed=1, steps=4, sampler_name="euler")
    with core_changed(f"model_sampling.{missing}"):
        plan_loops(ChangedSampling(setup[0].get_model_object("model_sampling"), missing), settings)


def test_the_trainer_needs_the_noise_levels(tmp_path):
    model = tiny_model(seed=7)
    real = model.model.model_sampling
    del model.model.model_sampling  # a plain attribute in place of the module: the core's object, renamed inside
    model.model.model_sampling = ChangedSampling(real, "sigmas")
    dataset = FolderDataset(write_training_folder(tmp_path / "data"), 64)
    with core_changed("model_sampling.sigmas"):
        Trainer(model, tiny_vae(), encode_text, dataset, tmp_path / "out", TrainSettings(head_dim=32))

"""Faithful mode against the reference, with every expected number computed here independently of the
pack (diffusers' schedulers configured as the reference's, the SD noise schedule written out, the
reference's float rules restated): start noise, timesteps, re-noise, seeds, loop negative, the
patch's step gate and the reference-exact edit output."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import comfy.k_diffusion.sampling
import comfy.sample
from comfy.patcher_extension import WrappersMP

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import edit_source
from ezigen_lib.generate import GenerationSettings, run_generation
from ezigen_lib.inject import SubjectInjection
from ezigen_lib.inversion import invert
from ezigen_lib.gate import NEVER_ON
from ezigen_lib.stage_sampling import CallCounter, with_window

from .reference_scheduler import reference_inverse_levels
from tiny_models import random_context, sample, tiny_encoder, tiny_model

POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
EMPTY = random_context(102)  # stands for CLIPTextEncode("")
LOOP_NEGATIVE = [[EMPTY, {}]]
INVERSION_CONTEXT = random_context(5)


def sd_alphas_cumprod() -> torch.Tensor:
    """SD1.x/SD2.x's training schedule: scaled-linear betas 0.00085 .. 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def reference_ddpm_timesteps(steps: int) -> list[int]:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


class ModelInputs:
    """APPLY_MODEL spy: every UNet input (x in ComfyUI's sigma-scaled space), its sigma and text."""

    def __init__(self, model):
        self.calls = []
        self.model = model.clone()
        self.model.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "test_spy", self)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        self.calls.append((x.clone(), t.clone(), None if c_crossattn is None else c_crossattn.clone()))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def timesteps(self, model_sampling) -> list[int]:
        return [round(float(model_sampling.timestep(t[0]))) for _, t, _ in self.calls]


@pytest.fixture(scope="module")
def model_sampling(parts):
    return parts[0].get_model_object("model_sampling")


def generate(parts, model=None, **kw):
    kw.setdefault("sampler_name", "ddpm")
    kw.setdefault("seed", 3)
    with torch.inference_mode():
        return run_generation(model or parts[0], POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, parts[1],
                              GenerationSettings(**kw), loop_negative=LOOP_NEGATIVE)


SOURCE = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))


def edit(parts, model=None, steps=30, rounds=1, **kw):
    kw.setdefault("sampler_name", "ddpm")
    settings = EditSettings(seed=9, steps=steps, short_side=64, policy=LoopPolicy(loops=rounds), **kw)
    mask = torch.zeros(64, 64)
    mask[16:48, 8:40] = 1
    with torch.inference_mode():
        return run_edit(model or parts[0], INVERSION_CONTEXT, parts[1], edit_source(SOURCE, mask), POSITIVE, NEGATIVE,
                        settings)


# --- 0. start noise -------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_first_pass_starts_from_unit_variance_noise(parts, steps):
    spy = ModelInputs(parts[0])
    generate(parts, model=spy.model, steps=steps, policy=LoopPolicy(loops=0))
    x, sigma, _ = spy.calls[0]
    noise = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(3))  # ComfyUI's noise for seed 3
    seen = x / math.sqrt(1 + float(sigma[0]) ** 2)  # what the UNet sees (VP form), both CFG halves
    torch.testing.assert_close(seen, noise.expand_as(seen), atol=1e-6, rtol=1e-6)


def test_clean_mode_keeps_comfyuis_start(parts):
    spy = ModelInputs(parts[0])
    generate(parts, model=spy.model, steps=10, policy=LoopPolicy(loops=0), mode="clean")
    x, sigma, _ = spy.calls[0]
    noise = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(3))
    torch.testing.assert_close(x, (noise * sigma[0]).expand_as(x), atol=1e-6, rtol=1e-6)


# --- 3. timesteps for any N ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [20, 30, pytest.param(50, marks=pytest.mark.slow),
                                   pytest.param(70, marks=pytest.mark.slow)])
def test_faithful_generation_samples_the_reference_timesteps(parts, model_sampling, steps):
    spy = ModelInputs(parts[0])
    result = generate(parts, model=spy.model, steps=steps, split_ratio=0.4, policy=LoopPolicy(loops=1))
    expected = reference_ddpm_timesteps(steps)
    loop_start = int(steps - 0.4 * steps)
    assert spy.timesteps(model_sampling) == expected + expected[loop_start:]
    assert result.report["reference_timesteps"] == expected
    assert result.report["timesteps"] == pytest.approx(expected, abs=0.01)
    if steps == 30:  # ComfyUI's own ddim_uniform has 31 steps here and brings the subject in at t = 397
        assert expected[math.floor((1 - 0.4) * 30)] == 364


@pytest.mark.parametrize("steps", [20, 30, pytest.param(50, marks=pytest.mark.slow),
                                   pytest.param(70, marks=pytest.mark.slow)])
def test_faithful_edit_inverts_and_edits_on_the_reference_grids(parts, model_sampling, steps):
    spy = ModelInputs(parts[0])
    result = edit(parts, model=spy.model, steps=steps)
    inversion = reference_inverse_levels(steps, 0.4)
    editing = reference_ddpm_timesteps(steps)[int(steps - 0.4 * steps):]
    assert spy.timesteps(model_sampling) == inversion[:-1] + editing  # one evaluation per interval
    assert result.report["inversion_timesteps"] == pytest.approx(inversion, abs=0.01)


# --- 0. the edit's regeneration start ----------------------------------------------------------------------
def test_edit_starts_from_the_inverted_latent_as_the_reference_hands_it_over(parts, model_sampling):
    """N = 30: the inversion ends at t = 400 but editing starts at t = 364; the reference passes the
    variance-preserving latent on unchanged, so the UNet's first editing input is that latent."""
    spy = ModelInputs(parts[0])
    edit(parts, model=spy.model, steps=30)
    inverse_steps = reference_inverse_levels(30, 0.4)
    assert inverse_steps[-1] == 400
    with torch.inference_mode():
        latent = parts[1].encode(SOURCE)  # the tiny VAE has no posterior: its encoding is exact
        levels = model_sampling.sigma(torch.tensor(inverse_steps, dtype=torch.float32))
        trajectory = invert(with_window(parts[0], NEVER_ON, CallCounter()), INVERSION_CONTEXT, latent, levels)
    inverted_vp = trajectory[-1] / math.sqrt(1 + float(levels[-1]) ** 2)
    x, sigma, _ = spy.calls[len(inverse_steps) - 1]  # the first editing evaluation (a CFG batch of two)
    assert round(float(model_sampling.timestep(sigma[0]))) == 364
    seen = x / math.sqrt(1 + float(sigma[0]) ** 2)
    torch.testing.assert_close(seen, inverted_vp.expand_as(seen), atol=1e-5, rtol=1e-5)


# --- the faithful re-noise as used ---------------------------------------------------------------------
@pytest.mark.slow
def test_loop_starts_at_the_references_renoise(parts, monkeypatch):
    """Loop 1's first UNet input is sqrt(a400) z + sqrt(1 - a400) eps (the reference's t = 400 noise),
    denoised as if at t = 381, with z the re-encoded first image; a, b from the SD schedule written out."""
    drawn = []
    original = comfy.sample.prepare_noise
    monkeypatch.setattr(comfy.sample, "prepare_noise", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    spy = ModelInputs(parts[0])
    result = generate(parts, model=spy.model, steps=50, split_ratio=0.4, policy=LoopPolicy(loops=1))
    alphas = sd_alphas_cumprod()
    x, sigma, _ = spy.calls[50]  # the first evaluation after the 50-step first pass
    assert round(float(parts[0].get_model_object("model_sampling").timestep(sigma[0]))) == 381
    with torch.inference_mode():
        z = parts[0].model.process_latent_in(parts[1].encode(result.round_images[:1]))
    eps = drawn[-1]
    seen = x / math.sqrt(1 + float(sigma[0]) ** 2)
    expected = math.sqrt(alphas[400]) * z + math.sqrt(1 - alphas[400]) * eps
    torch.testing.assert_close(seen.double(), expected.double().expand_as(seen), atol=1e-5, rtol=1e-5)


# --- 1. every (round, step) its own noise -------------------------------------------------------------------
@pytest.mark.slow
def test_edit_rounds_draw_fresh_noise_at_every_step(parts, monkeypatch):
    draws = []
    original = comfy.k_diffusion.sampling.default_noise_sampler

    def recording(x, seed=None):
        sampler = original(x, seed=seed)
        return lambda *a: draws.append(sampler(*a)) or draws[-1]

    monkeypatch.setattr(comfy.k_diffusion.sampling, "default_noise_sampler", recording)
    result = edit(parts, steps=10, rounds=3, sampler_name="euler_ancestral")
    assert result.report["loops"] == 3 and len(draws) == 3 * 3  # 4 steps a round; the last, to sigma 0, adds none
    for i in range(len(draws)):
        for j in range(i):
            assert not torch.equal(draws[i], draws[j]), (i, j)
    again = edit(parts, steps=10, rounds=3, sampler_name="euler_ancestral")
    assert torch.equal(result.image, again.image)  # still deterministic per seed


# --- 2. the loops' negative ---------------------------------------------------------------------------------
def test_faithful_loops_need_and_use_the_empty_prompt(parts):
    with pytest.raises(ValueError, match="CLIPTextEncode with an empty text to the EZIGen Sampler's loop_negative"):
        with torch.inference_mode():
            run_generation(parts[0], POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, parts[1],
                           GenerationSettings(seed=1, steps=4, split_ratio=0.5, policy=LoopPolicy(loops=1)))
    spy = ModelInputs(parts[0])
    generate(parts, model=spy.model, steps=4, split_ratio=0.5, policy=LoopPolicy(loops=1))
    texts = [c for _, _, c in spy.calls]
    assert all(any(torch.equal(row[:EMPTY.shape[1]], EMPTY[0]) for row in c) for c in texts[4:])  # loops: empty
    assert not any(torch.equal(row[:EMPTY.shape[1]], EMPTY[0]) for c in texts[:4] for row in c)  # first pass: not


def test_clean_loops_fall_back_to_the_negative(parts):
    with torch.inference_mode():
        settings = GenerationSettings(seed=1, steps=4, split_ratio=0.5, policy=LoopPolicy(loops=1), mode="clean",
                                      sampler_name="euler")
        fallback = run_generation(parts[0], POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, parts[1],
                                  settings)
        explicit = run_generation(parts[0], POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, parts[1],
                                  settings, loop_negative=NEGATIVE)
    assert torch.equal(fallback.latent, explicit.latent)


# --- 5. the patch's step gate with the stock KSampler ----------------------------------------------------------
def test_patch_gates_by_the_references_step_index_on_a_whole_schedule(monkeypatch):
    from ezigen_lib.capture import encode_subject
    from ezigen_lib.inject import apply_subject
    from tiny_models import tiny_vae

    encoder = tiny_encoder()
    with torch.inference_mode():
        subject = encode_subject(encoder.model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3), None, 0, 64,
                                 encoder.info.widths)
    model = apply_subject(tiny_model(7), encoder, subject, 1.0, start_percent=0.2, end_percent=1.0)  # split 0.8
    active = []
    original = SubjectInjection.__call__

    def spy(self, x, extra):
        out = original(self, x, extra)
        if extra["transformer_index"] == 0:
            active.append(not torch.equal(out, x))
        return out

    monkeypatch.setattr(SubjectInjection, "__call__", spy)
    sample(model, steps=10, sampler="euler", scheduler="ddim_uniform")
    split = 1 - 0.2
    assert active == [(1 - split) * 10 < i + 1 for i in range(10)]  # the reference's rule: on from step 1
    assert active.count(True) == 9
    active.clear()
    sample(model, steps=10, sampler="euler", scheduler="karras")  # sigma_max start: a whole schedule too
    assert active == [(1 - split) * 10 < i + 1 for i in range(10)]


# --- 4. reference-exact editing -------------------------------------------------------------------------------
@pytest.mark.slow
def test_reference_mode_returns_what_the_reference_returns(parts, monkeypatch):
    """Source 50x70: the reference works at 512x716 (PIL bicubic, 8-bit), keeps only mask pixels that
    stay 255, squashes that 0/1 uint8 mask to 512x512 with cv2 (so it stays 0/1) and interpolates it to
    the 64x89 latent grid; its VAE sees the top-left 512x712 (716 is floored to a multiple of 8, latents
    aligned top left); it returns the decoded image resized (PIL bicubic) to 512x716, not composited."""
    import cv2

    import ezigen_lib.edit_rounds as edit_module

    source = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(50, 70)
    mask[10:30, 20:50] = 1.0
    mask[30:40, 20:50] = 0.6  # soft: the reference drops it
    seen, decoded, encoded = {}, [], []
    original_blend, original_decode = edit_module._blend_sampler, type(parts[1]).decode
    original_encode = edit_module.encode_image

    def blend_sampler(step_sampler, background, latent_mask, *args):
        seen["mask"] = latent_mask
        return original_blend(step_sampler, background, latent_mask, *args)

    def decode(self, x):
        decoded.append(original_decode(self, x))
        return decoded[-1]

    def encode_image(vae, pixels, seed):
        encoded.append(pixels.clone())
        return original_encode(vae, pixels, seed)

    monkeypatch.setattr(edit_module, "_blend_sampler", blend_sampler)
    monkeypatch.setattr(edit_module, "encode_image", encode_image)
    monkeypatch.setattr(type(parts[1]), "decode", decode)
    settings = EditSettings(seed=2, steps=10, sampler_name="euler", policy=LoopPolicy(loops=1),
                            mode="reference", short_side=64, mask_mode="soft")
    with torch.inference_mode():
        result = run_edit(parts[0], INVERSION_CONTEXT, parts[1], edit_source(source, mask), POSITIVE, NEGATIVE,
                          settings)

    # the reference's preprocessing, restated with PIL and numpy
    def pil(array01):
        return Image.fromarray((array01 * 255).round().astype(np.uint8), "RGB")

    mask_rgb = pil(np.repeat(mask.numpy()[..., None], 3, axis=-1)).resize((716, 512), Image.Resampling.BICUBIC)
    hard = (np.asarray(mask_rgb)[..., 0] // 255).astype(np.uint8)
    square = cv2.resize(hard, (512, 512), interpolation=cv2.INTER_LINEAR)
    assert set(np.unique(square)) == {0, 1}
    expected_mask = F.interpolate(torch.from_numpy(square).float()[None, None], size=(64, 89), mode="bilinear",
                                  align_corners=False)
    torch.testing.assert_close(seen["mask"], expected_mask, atol=0, rtol=0)
    work = np.asarray(pil(source[0].numpy()).resize((716, 512), Image.Resampling.BICUBIC)) / 255
    assert encoded[0].shape == (1, 512, 712, 3)
    torch.testing.assert_close(encoded[0][0], torch.from_numpy(work[:, :712]).float())
    assert float(seen["mask"][0, 0, 41:50].max()) == 0.0  # the soft rows (30..40 of 50, 38..51 of 64) are out
    assert float(seen["mask"][0, 0, 16:36, 30:60].min()) == 1.0  # the fully painted ones are in
    final = np.asarray(pil(decoded[-1][0].numpy()).resize((716, 512), Image.Resampling.BICUBIC)) / 255
    assert result.image.shape == (1, 512, 716, 3)
    torch.testing.assert_close(result.image[0], torch.from_numpy(final).float())
    assert result.report["mode"] == "reference"


@pytest.mark.parametrize("size", [(512, 716), (716, 512), (512, 1024), (512, 683), (777, 512), (512, 512)])
def test_reference_mask_squash_is_cv2s_resize_of_a_01_image(size):
    """The reference squashes its short-512 0/1 uint8 mask to 512x512 with cv2.resize(INTER_LINEAR): the
    result is 0/1 again, decided by cv2's fixed-point rounding. Rectangles, a disc, stripes, noise."""
    import cv2

    from ezigen_lib.crop import _binary_linear_resize

    g = torch.Generator().manual_seed(sum(size))
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = [(yy >= h // 5) & (yy < h // 2) & (xx >= w // 3) & (xx < w - 7),
             (yy - h / 3) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2,
             xx % 2 == 1, yy % 3 == 0,
             torch.rand(h, w, generator=g) > 0.5]
    for mask in masks:
        expected = cv2.resize(mask.numpy().astype(np.uint8), (512, 512), interpolation=cv2.INTER_LINEAR)
        ours = _binary_linear_resize(mask.float()[None], (512, 512))[0]
        assert torch.equal(ours, torch.from_numpy(expected).float())


# --- autostop compares each round with the one before ---------------------------------------------------------
def test_autostop_compares_each_round_with_the_round_before(parts):
    """Latent cosine (no CLIP vision): round 2 repeats round 1 but is orthogonal to the first image, so
    the rule stops after loop 2 only if it compares consecutive rounds, as the reference does."""
    from ezigen_lib.rounds import RoundLog

    g = torch.Generator().manual_seed(0)
    first = torch.randn(1, 4, 8, 8, generator=g)
    other = torch.randn(1, 4, 8, 8, generator=g)
    other -= (other * first).sum() / (first * first).sum() * first  # orthogonal to the first round
    sequence = [other, other * 1.5, first, first]  # loop 1, 2 (same as 1), 3, 4
    policy = LoopPolicy(min_loops=1, max_loops=4, threshold=0.99)
    with torch.inference_mode():
        rounds = RoundLog(None, parts[1].decode(first), first)
        while policy.next_step(rounds.loops, rounds.last_similarity)[0]:
            rounds.add(parts[1], sequence[rounds.loops], 0.0)
    assert rounds.loops == 2
    assert rounds.similarities == pytest.approx([0.0, 1.0], abs=1e-5)


# --- the trainer and Encode Subject capture the same features ---------------------------------------------------
def test_trainer_subject_features_equal_encode_subject(tmp_path):
    from ezigen_lib.capture import encode_subject

    from training_data import write_training_folder

    from tiny_models import encode_text, tiny_trainer

    trainer = tiny_trainer(write_training_folder(tmp_path / "data"), tmp_path / "out")
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(11))
    prompt = "a photo of a thing"
    torch.manual_seed(21)  # the trainer draws the t = 1 noise from the global generator
    with torch.no_grad():
        trained = trainer.objective.subject_features([image], [[prompt]])
    with torch.inference_mode():
        encoded = encode_subject(trainer.model, trainer.vae, encode_text([prompt]), image, None, 21, 64,
                                 trainer.info.widths)
    assert len(trained) == len(encoded.features) == 16
    for slot, (ours, theirs) in enumerate(zip(encoded.features, trained)):
        torch.testing.assert_close(ours.float(), theirs[0].float(), atol=2e-3, rtol=2e-3, msg=f"slot {slot}")

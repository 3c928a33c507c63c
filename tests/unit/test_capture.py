"""Subject encoding: 16 captures of norm1(x), in execution order, at timestep 1; the trainer's the same."""
import pytest
import torch

from ezigen_lib.capture import (FeatureRecorder, SUBJECT_TIMESTEP, encode_subject, prepare_subject_pixels,
                                subject_from_latents)
from ezigen_lib.family import UnsupportedModelError

from training_data import write_training_folder

from tiny_models import SD_BLOCKS, SD_WIDTH_MULTS, random_context, tiny_encoder, tiny_vae
from tiny_models import encode_text, tiny_trainer

IMAGES = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(9))


@pytest.fixture(scope="module")
def parts():
    return tiny_encoder(), tiny_vae()


def encode(parts, seed=0, images=IMAGES, mask=None, context=None, resolution=64):
    encoder, vae = parts
    with torch.inference_mode():
        return encode_subject(encoder.model, vae, random_context() if context is None else context, images, mask,
                              seed, resolution, encoder.info.widths)


def test_sixteen_features_in_execution_order_with_token_concat(parts, monkeypatch):
    calls = []
    original = FeatureRecorder.__call__

    def spy(self, n, c, v, extra):
        calls.append((extra["transformer_index"], extra["block"], extra["block_index"]))
        return original(self, n, c, v, extra)

    monkeypatch.setattr(FeatureRecorder, "__call__", spy)
    subject = encode(parts)
    assert calls == [(k, SD_BLOCKS[k], 0) for k in range(16)]
    grid = {1: 8 * 8, 2: 4 * 4, 4: 2 * 2}  # 64px -> 8x8 latent -> tokens per level; the middle is at 1x1
    for k, f in enumerate(subject.features):
        tokens = 1 if SD_BLOCKS[k][0] == "middle" else grid[SD_WIDTH_MULTS[k]]
        assert f.shape == (1, 2 * tokens, parts[0].info.widths[k])  # both images in one row
        assert f.dtype == torch.float16 and f.device.type == "cpu"
    assert subject.image_count == 2


def test_features_are_norm1_of_the_block_input_at_timestep_one(parts):
    encoder, vae = parts
    norm_outputs = {}
    transformers = [m for m in encoder.model.model.diffusion_model.modules()
                    if type(m).__name__ == "SpatialTransformer"]
    hooks = [t.transformer_blocks[0].norm1.register_forward_hook(
        lambda mod, inp, out, k=k: norm_outputs.__setitem__(k, out.detach().clone())) for k, t in enumerate(transformers)]
    timesteps = []
    hooks.append(encoder.model.model.diffusion_model.register_forward_pre_hook(
        lambda mod, args, kwargs: timesteps.append(args[1].clone()), with_kwargs=True))
    try:
        subject = encode(parts)
    finally:
        for h in hooks:
            h.remove()
    assert len(norm_outputs) == 16
    for k in range(16):
        want = norm_outputs[k].reshape(1, -1, norm_outputs[k].shape[-1]).half()
        torch.testing.assert_close(subject.features[k], want)
    assert timesteps[0].tolist() == [float(SUBJECT_TIMESTEP)] * 2
    sigma = encoder.model.get_model_object("model_sampling").sigma(torch.tensor(1.0))
    assert abs(float(1 / (1 + sigma ** 2) ** 0.5) - 0.99915) < 1e-5  # sqrt(alpha_bar_1), docs/method.md section 3


def test_seeded_and_leaves_encoder_unpatched(parts):
    a, b, c = encode(parts, seed=1), encode(parts, seed=1), encode(parts, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.features, b.features))
    assert not all(torch.equal(x, y) for x, y in zip(a.features, c.features))
    assert "patches" not in parts[0].model.model_options["transformer_options"]


def test_mask_paints_background_white_and_squashes_to_square():
    images = torch.zeros(1, 20, 30, 3)
    mask = torch.zeros(20, 30)
    mask[5:15, 10:20] = 1
    out = prepare_subject_pixels(images, mask, 16)
    assert out.shape == (1, 16, 16, 3)
    assert out[0, 0, 0].tolist() == pytest.approx([1.0] * 3) and out[0, 8, 8].tolist() == pytest.approx([0.0] * 3)
    with pytest.raises(ValueError, match="mask batch 3"):
        prepare_subject_pixels(torch.zeros(2, 8, 8, 3), torch.zeros(3, 8, 8), 8)


def test_mask_changes_the_features(parts):
    full, masked = encode(parts), encode(parts, mask=torch.zeros(48, 40))
    assert not torch.equal(full.features[0], masked.features[0])


def test_wrong_conditioning_width_is_a_clear_error(parts):
    with pytest.raises(UnsupportedModelError, match="48-wide but the encoder .* expects 32-wide"):
        encode(parts, context=random_context(width=48))


# --- the trainer captures what Encode Subject captures ---------------------------------------------------------
@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture")
    return tiny_trainer(write_training_folder(root / "data"), root / "out")


@pytest.mark.parametrize("counts", [[1], [2], [2, 1]], ids=["one-image", "two-image-set", "two-examples"])
def test_trainer_and_encode_subject_capture_the_same_features(trainer, counts):
    """Same clean latents, timestep-1 noise and one text row per subject image: each example's features
    from the trainer are the Encode Subject tokens of its images, concatenated in order. The node stores
    fp16 and the trainer fp32, so they may differ by fp16 rounding alone: at most 2^-11 relative (round to
    nearest, normal range) or 2^-25 absolute (half the subnormal spacing)."""
    images = sum(counts)
    g = torch.Generator().manual_seed(3)
    latent, noise = torch.randn(images, 4, 8, 8, generator=g), torch.randn(images, 4, 8, 8, generator=g)
    context = encode_text([f"a photo of subject {i}" for i in range(images)])
    with torch.no_grad():
        trained = trainer.objective.features_from_latents(latent, noise, context, counts)
    with torch.inference_mode():
        encoded = subject_from_latents(trainer.model, latent, noise, context, 64)
    assert len(trained) == len(encoded.features) == 16 and encoded.image_count == images
    for slot, (ours, theirs) in enumerate(zip(encoded.features, trained)):
        per_image = ours.shape[1] // images
        assert [f.shape[1] for f in theirs] == [n * per_image for n in counts]
        assert theirs[0].dtype == torch.float32
        torch.testing.assert_close(ours.float(), torch.cat(theirs, dim=1), rtol=2 ** -11, atol=2 ** -25,
                                   msg=lambda m, slot=slot: f"slot {slot}: {m}")

"""The autostop's image encoder: OpenAI ViT-B/32 through ComfyUI's CLIP vision machinery."""
import pytest
import torch
from safetensors.torch import save_file

from ezigen_lib.similarity import ClipVisionFileError, clip_embeddings, cosine, load_clip_vision


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory):
    import make_checkpoints

    return make_checkpoints.make_clip_vit_b32(tmp_path_factory.mktemp("clip") / "clip_vit_b32.safetensors")


def test_vit_b32_loads_with_the_shipped_config_and_embeds(vit_b32):
    model = load_clip_vision(vit_b32)
    images = torch.rand(3, 80, 96, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        embeddings = clip_embeddings(model, images)
    assert embeddings.shape == (3, 512)
    sims = cosine(embeddings, embeddings)
    assert torch.allclose(sims, torch.ones(3), atol=1e-4)
    assert cosine(embeddings[:1], embeddings[1:2]).item() < 0.9999


def test_not_a_clip_vision_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ClipVisionFileError, match="models/clip_vision"):
        load_clip_vision(path)


def test_incomplete_vit_b32(tmp_path, vit_b32):
    from safetensors.torch import load_file

    sd = load_file(str(vit_b32))
    sd.pop("visual_projection.weight")
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ClipVisionFileError, match="lacks 1 tensors"):
        load_clip_vision(path)

"""Subject encoding: one pass of the frozen UNet at timestep 1, recording the normalised input of
each self-attention (``norm1(x)``, the reference's "before_sa" feature) in all 16 blocks."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import comfy.model_management

from .layout import UnsupportedModelError, require_ezigen_layout
from .schedule import derive_seed
from .slots import SLOT_COUNT
from .vae_sample import encode_sample

SUBJECT_TIMESTEP = 1  # the reference noises the subject latent to DDPM timestep 1
FEATURE_DTYPE = torch.float16


@dataclass(frozen=True)
class SubjectFeatures:
    """Per-slot subject tokens, each (1, images * HW_k, C_k), on ComfyUI's intermediate device."""
    features: tuple[torch.Tensor, ...]
    image_count: int
    resolution: int

    @property
    def token_counts(self) -> tuple[int, ...]:
        return tuple(f.shape[1] for f in self.features)


class FeatureRecorder:
    """attn1_patch that records n = norm1(x) by runtime transformer index and changes nothing."""

    def __init__(self, store_device: torch.device, store_dtype: torch.dtype = FEATURE_DTYPE):
        self.store_device = store_device
        self.store_dtype = store_dtype
        self.features: dict[int, torch.Tensor] = {}
        self.calls: list[tuple[int | None, tuple | None, int | None]] = []

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        index = extra_options.get("transformer_index")
        self.calls.append((index, extra_options.get("block"), extra_options.get("block_index")))
        self.features[index] = n.detach().to(self.store_device, self.store_dtype)
        return n, context_attn1, value_attn1

    def __deepcopy__(self, memo):
        return self


def prepare_subject_pixels(images: torch.Tensor, mask: torch.Tensor | None, resolution: int) -> torch.Tensor:
    """IMAGE (B,H,W,C) -> (B,res,res,3): background outside the mask made white (the reference's
    subjects are cut out on white), then squashed to a square as the reference does."""
    rgb = images[..., :3].float()
    if mask is not None:
        m = mask.float()
        if m.ndim == 2:
            m = m[None]
        if m.shape[0] not in (1, rgb.shape[0]):
            raise ValueError(f"subject mask batch {m.shape[0]} does not match the {rgb.shape[0]} subject images "
                             "(give one mask, or one per image)")
        if m.shape[-2:] != rgb.shape[1:3]:
            m = F.interpolate(m[:, None], size=rgb.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
        m = m.clamp(0, 1)[..., None].to(rgb.device)
        rgb = rgb * m + (1.0 - m)
    bchw = rgb.movedim(-1, 1)
    if bchw.shape[-2:] != (resolution, resolution):
        bchw = F.interpolate(bchw, size=(resolution, resolution), mode="bilinear", antialias=True,
                             align_corners=False)
    return bchw.clamp(0, 1).movedim(1, -1)


def subject_context(conditioning) -> torch.Tensor:
    """The text context of a subject prompt CONDITIONING: exactly one entry (one CLIPTextEncode)."""
    if not conditioning:
        raise ValueError("The subject prompt's conditioning is empty: connect a CLIPTextEncode of the subject's "
                         "class (e.g. 'a dog').")
    if len(conditioning) != 1:
        raise ValueError(f"The subject prompt holds {len(conditioning)} conditionings (combined prompts); Encode "
                         "Subject takes one: connect a single CLIPTextEncode of the subject's class.")
    return conditioning[0][0]


def encode_subject(encoder, vae, context: torch.Tensor, images: torch.Tensor, mask: torch.Tensor | None,
                   seed: int, resolution: int, widths: tuple[int, ...]) -> SubjectFeatures:
    """Run the encoder MODEL once on the noised subject latents and return the 16 features."""
    layout = require_ezigen_layout(encoder, widths, "encoder model")
    if context.ndim != 3 or context.shape[-1] != layout.context_dim:
        raise UnsupportedModelError(
            f"The subject prompt's conditioning is {context.shape[-1]}-wide but the encoder ({layout.family}) expects "
            f"{layout.context_dim}-wide text embeddings: encode the subject prompt with the encoder checkpoint's own "
            "CLIP (for the official weights, the SD2.1-base CLIP).")
    rows = context.shape[0]
    if rows not in (1, images.shape[0]):
        raise ValueError(f"The subject prompt is a batch of {rows} prompts but there are {images.shape[0]} subject "
                         "images: give one prompt for all images, or one per image in the same order.")
    pixels = prepare_subject_pixels(images, mask, resolution)
    latent = encode_sample(vae, pixels, derive_seed(seed, "vae"))  # the reference samples the posterior
    if latent.shape[1] != layout.latent_channels:
        raise UnsupportedModelError(
            f"The VAE makes {latent.shape[1]}-channel latents but the encoder ({layout.family}) needs "
            f"{layout.latent_channels}: use the VAE of the encoder's checkpoint (SD1.x/SD2.x).")
    batch = latent.shape[0]
    base = encoder.model
    z = base.process_latent_in(latent.float())
    sigma = encoder.get_model_object("model_sampling").sigma(torch.tensor(float(SUBJECT_TIMESTEP)))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(z.shape, generator=generator, dtype=torch.float32)
    x = z + noise * sigma  # ComfyUI's variance-exploding form of sqrt(a)z + sqrt(1-a)eps at t=1

    store = comfy.model_management.intermediate_device()
    recorder = FeatureRecorder(store)
    patcher = encoder.clone()
    patcher.set_model_attn1_patch(recorder)
    comfy.model_management.load_models_gpu([patcher])
    device = patcher.load_device
    transformer_options = dict(patcher.model_options["transformer_options"])
    with torch.no_grad():
        patcher.model.apply_model(x.to(device), sigma.expand(batch).to(device),
                                  c_crossattn=context.expand(batch, -1, -1).to(device),  # 1 row, or 1 per image
                                  transformer_options=transformer_options)
    if sorted(recorder.features) != list(range(SLOT_COUNT)):
        raise UnsupportedModelError(
            f"The encoder ran {len(recorder.calls)} self-attentions with indices {sorted(recorder.features)}, "
            f"expected {SLOT_COUNT} (0..{SLOT_COUNT - 1}); another patch may be replacing the encoder's blocks.")
    features = tuple(recorder.features[k].reshape(1, -1, recorder.features[k].shape[-1]) for k in range(SLOT_COUNT))
    return SubjectFeatures(features=features, image_count=batch, resolution=resolution)


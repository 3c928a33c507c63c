"""Subject encoding: one pass of the frozen UNet at timestep 1, recording the normalised input of
each self-attention (``norm1(x)``, the reference's "before_sa" feature) in every transformer layer of
the model's family (family.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import comfy.model_management

from .input_checks import require_finite_pixels
from .core_details import require_model_sampling
from .family import Family, UnsupportedModelError, family_of, model_family_name, require_adapter_fits
from .step_counts import derive_seed
from .vae_sample import encode_sample

SUBJECT_TIMESTEP = 1  # the reference noises the subject latent to DDPM timestep 1
FEATURE_DTYPE = torch.float16
NODE = "Encode Subject (EZIGen)"
CAPTURE = "which self-attention of the encoder a subject feature comes from"


@dataclass(frozen=True)
class SubjectFeatures:
    """Per-layer subject tokens, each (1, images * HW_k, C_k), on ComfyUI's intermediate device.

    `family` (ComfyUI's model family of the encoder UNet, e.g. SD20) and `adapter` (the adapter file the
    encoder was loaded with, as Load EZIGen Encoder lists it) say what the subject was made for, so that a
    saved subject can refuse an encoder of another layout; None where unknown.
    """
    features: tuple[torch.Tensor, ...]
    image_count: int
    resolution: int
    family: str | None = None
    adapter: str | None = None

    @property
    def token_counts(self) -> tuple[int, ...]:
        return tuple(f.shape[1] for f in self.features)


class FeatureRecorder:
    """attn1_patch that records n = norm1(x) by the family's layer index and changes nothing."""

    def __init__(self, family: Family, store_device: torch.device, store_dtype: torch.dtype = FEATURE_DTYPE):
        self.family = family
        self.store_device = store_device
        self.store_dtype = store_dtype
        self.features: dict[int, torch.Tensor] = {}
        self.calls: list[tuple[int | None, tuple | None, int | None]] = []

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        index = self.family.layer_at(extra_options, CAPTURE).index
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


def subject_pooled(conditioning) -> torch.Tensor | None:
    """The pooled text embedding of a subject prompt CONDITIONING (SDXL's CLIP gives one), else None."""
    return conditioning[0][1].get("pooled_output") if conditioning else None


def subject_adm(base_model, pooled: torch.Tensor | None, resolution: int) -> torch.Tensor | None:
    """The added conditioning ``y`` of the subject pass, for a UNet that takes one (SDXL: the pooled text
    and the size ids upstream's encoder pass uses: original = the family's native size, crop (0, 0),
    target = `resolution`); None for a UNet without (SD1.x/SD2.x)."""
    if not getattr(base_model, "adm_channels", 0):
        return None
    family = family_of(base_model)
    if pooled is None:
        raise UnsupportedModelError(
            f"The encoder ({family.name}) needs the subject prompt's pooled text embedding, which the connected "
            "conditioning lacks: connect a CLIPTextEncode of the encoder checkpoint's own CLIP.")
    native = family.native_resolution
    return base_model.encode_adm(pooled_output=pooled, width=native, height=native, crop_w=0, crop_h=0,
                                 target_width=resolution, target_height=resolution)


def subject_sigma(model_sampling) -> torch.Tensor:
    """The noise level of timestep 1 in ComfyUI's sampling space (sigma, where x = z + sigma * eps)."""
    require_model_sampling(model_sampling, "sigma", purpose="the noise level of timestep 1 for the subject")
    return model_sampling.sigma(torch.tensor(float(SUBJECT_TIMESTEP)))


def capture_features(base_model, latent: torch.Tensor, noise: torch.Tensor, context: torch.Tensor,
                     device: torch.device, store_device: torch.device, store_dtype: torch.dtype,
                     transformer_options: dict | None = None, sigma: torch.Tensor | None = None,
                     adm: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The one subject capture (Encode Subject's and the trainer's): noise the clean `latent` (model space,
    B images) with `noise` to timestep 1, run the UNet of `base_model` (a BaseModel whose weights are
    ready on `device`) once and return norm1(x) of its family's self-attentions, each (B, HW_k, C_k), stored
    on `store_device` in `store_dtype`.

    `context` is one text row for all images or one per image. `transformer_options` are the caller's
    (a ModelPatcher's), the recorder is added to a copy. `sigma`: timestep 1's noise level when the
    caller has already evaluated it (Encode Subject does so before ComfyUI moves the model to its device).
    `adm`: the added conditioning of a UNet that takes one (`subject_adm`), one row for all images or one each.
    """
    if sigma is None:
        sigma = subject_sigma(base_model.model_sampling)
    x = latent + noise * sigma  # ComfyUI's variance-exploding form of sqrt(a)z + sqrt(1-a)eps at t=1
    batch = latent.shape[0]
    family = family_of(base_model)
    recorder = FeatureRecorder(family, store_device, store_dtype)
    options = dict(transformer_options or {})
    patches = dict(options.get("patches", {}))
    patches["attn1_patch"] = patches.get("attn1_patch", []) + [recorder]
    options["patches"] = patches
    extra = {} if adm is None else {"y": adm.expand(batch, -1).to(device)}
    with torch.no_grad():
        base_model.apply_model(x.to(device), sigma.expand(batch).to(device),
                               c_crossattn=context.expand(batch, -1, -1).to(device), transformer_options=options,
                               **extra)
    count = len(family.layers)
    if sorted(recorder.features) != list(range(count)):
        raise UnsupportedModelError(
            f"The model ran {len(recorder.calls)} self-attentions with indices {sorted(recorder.features)}, "
            f"expected {count} (0..{count - 1}); another patch may be replacing its blocks.")
    return [recorder.features[k] for k in range(count)]


def _check_subject_inputs(encoder, context: torch.Tensor, images: torch.Tensor, widths: tuple[int, ...]):
    """The encoder's family, after refusing a text context or prompt batch it cannot take."""
    family = require_adapter_fits(encoder, widths, "encoder model")
    if context.ndim != 3 or context.shape[-1] != family.context_dim:
        raise UnsupportedModelError(
            f"The subject prompt's conditioning is {context.shape[-1]}-wide but the encoder ({family.name}) expects "
            f"{family.context_dim}-wide text embeddings: encode the subject prompt with the encoder checkpoint's own "
            "CLIP (for the official weights, the SD2.1-base CLIP).")
    rows = context.shape[0]
    if rows not in (1, images.shape[0]):
        raise ValueError(f"The subject prompt is a batch of {rows} prompts but there are {images.shape[0]} subject "
                         "images: give one prompt for all images, or one per image in the same order.")
    return family


def encode_subject(encoder, vae, context: torch.Tensor, images: torch.Tensor, mask: torch.Tensor | None,
                   seed: int, resolution: int, widths: tuple[int, ...],
                   adapter: str | None = None, pooled: torch.Tensor | None = None) -> SubjectFeatures:
    """Run the encoder MODEL once on the noised subject latents and return its features, one per layer.
    `adapter`: the adapter file's name, recorded in the subject (see `SubjectFeatures`). NaN or infinity in
    the images or mask is refused first: it would come out as "the encoder model's weights are damaged"."""
    require_finite_pixels(NODE, "image", images[..., :3], "IMAGE")  # the alpha channel is not used
    require_finite_pixels(NODE, "mask", mask, "MASK")
    family = _check_subject_inputs(encoder, context, images, widths)
    pixels = prepare_subject_pixels(images, mask, resolution)
    latent = encode_sample(vae, pixels, derive_seed(seed, "vae"))  # the reference samples the posterior
    if latent.shape[1] != family.latent_channels:
        raise UnsupportedModelError(
            f"The VAE makes {latent.shape[1]}-channel latents but the encoder ({family.name}) needs "
            f"{family.latent_channels}: use the VAE of the encoder's checkpoint (SD1.x/SD2.x).")
    z = encoder.model.process_latent_in(latent.float())
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(z.shape, generator=generator, dtype=torch.float32)
    return subject_from_latents(encoder, z, noise, context, resolution, adapter, pooled)


def subject_from_latents(encoder, latent: torch.Tensor, noise: torch.Tensor, context: torch.Tensor,
                         resolution: int, adapter: str | None = None,
                         pooled: torch.Tensor | None = None) -> SubjectFeatures:
    """Encode Subject from its clean latents (model space) and its timestep-1 noise: the node's path after
    the VAE and the seeded draw, public so a test can give it and the trainer the very same inputs."""
    sigma = subject_sigma(encoder.get_model_object("model_sampling"))  # evaluated before the model moves
    adm = subject_adm(encoder.model, pooled, resolution)
    comfy.model_management.load_models_gpu([encoder])
    features = capture_features(encoder.model, latent, noise, context, encoder.load_device,
                                comfy.model_management.intermediate_device(), FEATURE_DTYPE,
                                transformer_options=encoder.model_options["transformer_options"], sigma=sigma,
                                adm=adm)
    for k, feature in enumerate(features):
        if not bool(torch.isfinite(feature).all()):  # a subject with NaN would give black images downstream
            raise FloatingPointError(
                f"Encode Subject made NaN or infinite values in tensor 'features.{k}' (self-attention {k} of the "
                "encoder): the encoder model's weights are damaged or its precision overflowed (fp16 keeps values "
                "up to 65504). Run it in fp32 (e.g. ComfyUI's --force-fp32) or check the encoder checkpoint.")
    return SubjectFeatures(features=tuple(f.reshape(1, -1, f.shape[-1]) for f in features),  # images' tokens in one row
                           image_count=latent.shape[0], resolution=resolution, family=model_family_name(encoder),
                           adapter=adapter)

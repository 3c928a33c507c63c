"""fp16 and bf16: generation and editing with the UNets and the adapter computing in half precision.

ComfyUI on a CPU stores fp16/bf16 weights but computes in fp32 (its `unet_manual_cast`; the e2e tests run
the server that way, with its dtype flags). A GPU computes in fp16/bf16: forced here with
`set_model_compute_dtype`, as the core ModelComputeDtype node does. The reference is the same model in
fp32 with its weights rounded to the half dtype, so what differs is the arithmetic alone: the results
must be finite and within TOLERANCE of it (relative L2 error of the final latent; the tiny random VAE
decodes to near-black pictures, so pixels would hide any difference).
"""
import pytest
import torch

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import edit_source
from ezigen_lib.generate import GenerationSettings, run_generation

import comfy.ldm.modules.attention as comfy_attention

from tiny_models import patched_tiny, random_context

POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
CONTEXT = random_context(5)
SOURCE = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(4))
MASK = torch.zeros(48, 64)
MASK[8:40, 16:48] = 1
# relative L2 error of the final latent against fp32 on the same (rounded) weights; fp16 keeps 10 mantissa
# bits, bf16 only 7 (measured on these models: see the README's precision section)
TOLERANCE = {"generate": {torch.float16: 0.03, torch.bfloat16: 0.15},
             "edit": {torch.float16: 0.05, torch.bfloat16: 0.25}}
DTYPES = [torch.float16, torch.bfloat16]


def dtype_id(dtype):
    return str(dtype)[6:]


def parts(dtype=torch.float32, round_to=None):
    """Half precision computes in `dtype`; fp32 with `round_to` is its reference."""
    return patched_tiny(0.0, 1.0, dtype=dtype, compute_dtype=None if dtype == torch.float32 else dtype,
                        attn_precision=torch.float32,  # SD2.x's setting: attention upcast to fp32
                        round_to=round_to)


def generate(model_vae):
    model, vae = model_vae
    settings = GenerationSettings(seed=3, steps=4, split_ratio=0.5, sampler_name="euler", policy=LoopPolicy(loops=1))
    with torch.inference_mode():
        return run_generation(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, vae, settings,
                              loop_negative=NEGATIVE)  # faithful loops need one (it stands for the empty prompt)


def edit(model_vae):
    model, vae = model_vae
    settings = EditSettings(seed=3, steps=4, split_ratio=0.5, sampler_name="euler", short_side=48,
                            policy=LoopPolicy(loops=1))
    with torch.inference_mode():
        return run_edit(model, CONTEXT, vae, edit_source(SOURCE, MASK), POSITIVE, NEGATIVE, settings)


def relative_error(value, reference):
    return float((value.float() - reference.float()).norm() / reference.float().norm())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_generation_and_editing_in_half_precision_are_finite_and_close_to_fp32(dtype):
    reference = parts(round_to=dtype)
    half = parts(dtype)
    model = half[0]
    assert model.model.diffusion_model.input_blocks[1][1].proj_in.weight.dtype == dtype
    assert model.get_model_object("manual_cast_dtype") == dtype  # computes in dtype, as on a GPU
    for run in (generate, edit):
        want, got = run(reference), run(half)
        assert bool(torch.isfinite(got.latent).all()) and bool(torch.isfinite(got.image).all())
        error = relative_error(got.latent, want.latent)
        print(f"{dtype} {run.__name__}: relative latent error {error:.4f}")
        assert error <= TOLERANCE[run.__name__][dtype]
        assert got.report["unet_evaluations"] == want.report["unet_evaluations"]
        if run is edit:
            outside = MASK == 0
            assert torch.equal(got.image[0][outside], SOURCE[0][outside])  # the background is the source, exactly


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_adapter_computes_in_the_unet_dtype_with_the_models_attention_precision(dtype, monkeypatch):
    """The adapter's weights stay in file dtype and are cast to the UNet's compute dtype; its attention gets
    the model's attn_precision (fp32 for SD2.x), like the UNet's own attention."""
    seen = []
    original = comfy_attention.optimized_attention

    def spy(q, k, v, heads, *args, **kwargs):
        if k.shape[1] > q.shape[1]:  # the adapter: keys are the block's tokens plus the subject's
            seen.append((q.dtype, kwargs.get("attn_precision")))
        return original(q, k, v, heads, *args, **kwargs)

    half = parts(dtype)
    assert half[0].model_options["transformer_options"]["patches"]["middle_patch"][0].adapter_patcher.model \
        .learnable_weights.dtype == dtype
    monkeypatch.setattr(comfy_attention, "optimized_attention", spy)
    generate(half)
    assert seen and set(seen) == {(dtype, torch.float32)}

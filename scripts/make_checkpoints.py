"""Make RANDOM-WEIGHT stand-in model files for tests (never commit them).

No PyPI package ships Stable Diffusion or EZIGen weights, and tests must not download anything,
so the tests run on files that have the real *format* (keys, shapes, dtypes, file layout) but
random values:

- ``sd21base_random.safetensors`` / ``sd15_random.safetensors`` / ``sdxl_random.safetensors``: full-size
  single-file checkpoints (UNet + text encoder(s) + KL VAE, fp16) built from ComfyUI's own classes, so
  ``CheckpointLoaderSimple`` detects them as SD2.x (EPS), SD1.5 and SDXL (base, EPS).
- ``ezigen_sdxl_random.safetensors``: the 70 SDXL adapters and ``learnable_weights`` under upstream's diffusers
  names (docs: ezigen-sdxl-flux.md A3), fp16, as upstream's SDXL trainer would hold them.
- ``ezigen-official/checkpoint-200000/model.safetensors``: an EZIGen accelerate checkpoint
  folder as the reference trainer writes it: the whole SD2.1-base UNet under diffusers names plus
  the 16 attention adapters and ``learnable_weights`` (docs/method.md section 5).

Every tensor is drawn from its own generator, seeded from a base seed and the tensor's name, so
the files are reproducible, independent of build order, and the EZIGen folder's base UNet equals
the UNet inside ``sd21base_random.safetensors`` whether or not that file is passed in.

Files are written to a temporary name and renamed, so an interrupted run never leaves a file
that a later run would mistake for a finished one; existing files are skipped.

Usage: ``python scripts/make_checkpoints.py [--out DIR] [--only sd21base,sd15,ezigen,sdxl,ezigen_sdxl] [--verify]``
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from inprocess import REPO as REPO_ROOT  # noqa: E402 - and ezigen_lib importable
from ezigen_lib.host import bootstrap_inprocess  # noqa: E402

__all__ = [
    "BANNER",
    "DEFAULT_OUT",
    "EZIGEN_BLOCKS",
    "EZIGEN_FOLDER",
    "SD_FILE_NAMES",
    "TensorSource",
    "ezigen_adapter_keys",
    "make_all",
    "make_ezigen_official_folder",
    "make_sd_checkpoint",
    "read_safetensors_lazily",
    "verify_sd_checkpoint",
    "write_safetensors",
]

SdKind = Literal["sd21base", "sd15", "sdxl"]

DEFAULT_OUT = REPO_ROOT / ".cache" / "models"
SD_FILE_NAMES: dict[str, str] = {"sd21base": "sd21base_random.safetensors", "sd15": "sd15_random.safetensors",
                                 "sdxl": "sdxl_random.safetensors"}
EZIGEN_SDXL_FILE_NAME = "ezigen_sdxl_random.safetensors"
EZIGEN_FOLDER = Path("ezigen-official") / "checkpoint-200000"

BANNER = (
    "#" * 78 + "\n"
    "#  RANDOM-WEIGHT STAND-INS for tests: correct keys and shapes, random values.\n"
    "#  They generate noise, not images. Never commit, publish or use them as models.\n" + "#" * 78
)

# The 16 BasicTransformerBlocks that get an EZIGen adapter, in learnable_weights order
# (execution order down -> mid -> up), with their channel width (docs/method.md sections 2 and 5).
EZIGEN_BLOCKS: tuple[tuple[str, int], ...] = (
    ("down_blocks.0.attentions.0", 320),
    ("down_blocks.0.attentions.1", 320),
    ("down_blocks.1.attentions.0", 640),
    ("down_blocks.1.attentions.1", 640),
    ("down_blocks.2.attentions.0", 1280),
    ("down_blocks.2.attentions.1", 1280),
    ("mid_block.attentions.0", 1280),
    ("up_blocks.1.attentions.0", 1280),
    ("up_blocks.1.attentions.1", 1280),
    ("up_blocks.1.attentions.2", 1280),
    ("up_blocks.2.attentions.0", 640),
    ("up_blocks.2.attentions.1", 640),
    ("up_blocks.2.attentions.2", 640),
    ("up_blocks.3.attentions.0", 320),
    ("up_blocks.3.attentions.1", 320),
    ("up_blocks.3.attentions.2", 320),
)

WEIGHT_STD = 0.02  # small enough that activations stay finite through ~50 layers, large enough to matter
ADAPTER_NOISE_STD = 0.02
LEARNABLE_WEIGHTS_NOISE_STD = 0.05  # distinct per block, so a test can tell indices apart
LOGIT_SCALE = math.log(100.0)  # what trained CLIP text encoders carry; unused by SD, but realistic

InitRule = Literal["normal", "zeros", "ones", "logit_scale"]


def bootstrap() -> None:
    """ComfyUI importable; on the CPU unless the caller (a benchmark on a GPU) has already chosen its device."""
    bootstrap_inprocess(cpu=None if "comfy.model_management" in sys.modules else True)


# --------------------------------------------------------------------------------------------
# Seeded, name-keyed random values
# --------------------------------------------------------------------------------------------


def _generator(namespace: str, name: str, seed: int) -> torch.Generator:
    """One generator per tensor, so values do not depend on which tensors were made before."""
    key = zlib.crc32(f"{namespace}/{name}".encode()) + ((seed & 0xFFFFFFFF) << 32)
    return torch.Generator(device="cpu").manual_seed(key)


def _random_value(rule: InitRule, shape: Sequence[int], dtype: torch.dtype, namespace: str, name: str, seed: int) -> torch.Tensor:
    """Make one tensor following ``rule``; drawn in fp32 so fp16 files match fp32 ones after rounding."""
    if rule == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if rule == "ones":
        return torch.ones(shape, dtype=dtype)
    if rule == "logit_scale":
        return torch.full(shape, LOGIT_SCALE, dtype=dtype)
    values = torch.randn(shape, generator=_generator(namespace, name, seed), dtype=torch.float32)
    return values.mul_(WEIGHT_STD).to(dtype)


def _init_rule(module: torch.nn.Module, param_name: str) -> InitRule:
    """Norm layers start as identity, biases at zero, everything else small Gaussian.

    Zero norm biases matter for SD2: ComfyUI calls a checkpoint v-prediction when the std of
    ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` exceeds 0.09; ours is 0, i.e. EPS,
    which is what SD2.1-base is.
    """
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
        return "ones" if param_name == "weight" else "zeros"
    if param_name == "logit_scale":
        return "logit_scale"
    if param_name == "bias":
        return "zeros"
    return "normal"


@dataclass(frozen=True)
class _ParamPlan:
    """What one parameter of a (meta-device) module will be filled with."""

    name: str
    shape: tuple[int, ...]
    rule: InitRule


def _plan(module: torch.nn.Module) -> list[_ParamPlan]:
    """List every parameter with its init rule; buffers are rejected because we cannot fill them sensibly."""
    buffers = [n for n, _ in module.named_buffers()]
    if buffers:
        raise RuntimeError(f"unexpected buffers (no init rule for them): {buffers[:5]}")
    plans = []
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            plans.append(_ParamPlan(full, tuple(p.shape), _init_rule(mod, p_name)))
    return plans


def _materialize(module: torch.nn.Module, namespace: str, seed: int, dtype: torch.dtype) -> None:
    """Replace every meta parameter of ``module`` with a seeded CPU tensor of ``dtype``.

    Building on the meta device first costs no memory and no time, and lets us allocate each
    tensor once, directly in the file's dtype (peak RAM ~ the fp16 model, not an fp32 copy).
    """
    rules = {p.name: p.rule for p in _plan(module)}
    for mod_name, mod in module.named_modules():
        for p_name, p in list(mod.named_parameters(recurse=False)):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            value = _random_value(rules[full], p.shape, dtype, namespace, full, seed)
            mod._parameters[p_name] = torch.nn.Parameter(value, requires_grad=False)


# --------------------------------------------------------------------------------------------
# Streaming writers (temp file + rename)
# --------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorSource:
    """A tensor to be written, known by shape/dtype up front and produced only when written.

    Lazy production keeps peak memory at one tensor for files assembled from random values or
    from another (memory-mapped) file.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @staticmethod
    def of(tensor: torch.Tensor) -> TensorSource:
        """Wrap a tensor that already exists."""
        return TensorSource(tuple(tensor.shape), tensor.dtype, lambda: tensor)


def _pid_alive(pid: int) -> bool:
    """True if a process with this id exists (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(final: Path) -> None:
    """Delete temp files that killed runs left beside ``final`` (they can be GBs each)."""
    for leftover in final.parent.glob(f".{final.name}.*.partial"):
        pid = leftover.name[len(final.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside ``final``; rename it into place only if the block succeeds.

    The temp name carries our pid so concurrent runs never share one, and so a later run can
    tell a dead run's leftover from a live run's file in progress.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cache files are ordinary readable files
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_safetensors(path: Path, tensors: dict[str, TensorSource], metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file one tensor at a time, atomically.

    ``safetensors.torch.save_file`` serialises the whole file in memory first, doubling the peak
    for multi-GB checkpoints; the format (8-byte header length, JSON header, raw little-endian
    data) is simple enough to stream instead.
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors data is little-endian; this writer assumes a little-endian host")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, src in tensors.items():
        if src.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: dtype {src.dtype} not supported")
        nbytes = math.prod(src.shape) * torch.empty((), dtype=src.dtype).element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[src.dtype], "shape": list(src.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-byte aligned, as the reference writer does

    with _atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for name, src in tensors.items():
            t = src.make().detach()
            if tuple(t.shape) != src.shape or t.dtype != src.dtype:
                raise RuntimeError(f"{name}: made {tuple(t.shape)} {t.dtype}, announced {src.shape} {src.dtype}")
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del t
    return path


def read_safetensors_lazily(path: Path) -> dict[str, TensorSource]:
    """Index a safetensors file; each tensor is read from disk only when its ``make`` is called.

    Plain reads instead of safetensors' memory map: a mapped 2.6 GB checkpoint stays resident
    (and counted in RSS) while we copy it, whereas a read tensor is freed once written out.
    """
    path = Path(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data_start = 8 + header_len
    by_code = {code: dtype for dtype, code in _SAFETENSORS_DTYPES.items()}

    def reader(begin: int, end: int, shape: tuple[int, ...], dtype: torch.dtype) -> Callable[[], torch.Tensor]:
        def read() -> torch.Tensor:
            buf = bytearray(end - begin)
            with open(path, "rb") as f:
                f.seek(data_start + begin)
                if f.readinto(buf) != len(buf):
                    raise EOFError(f"{path} is truncated")
            if not buf:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(buf, dtype=dtype).reshape(shape)

        return read

    sources: dict[str, TensorSource] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in by_code:
            raise TypeError(f"{path}: {name} has unsupported dtype {info['dtype']}")
        shape, dtype = tuple(info["shape"]), by_code[info["dtype"]]
        sources[name] = TensorSource(shape, dtype, reader(*info["data_offsets"], shape, dtype))
    return sources


def _write_torch_bin(path: Path, tensors: dict[str, TensorSource]) -> Path:
    """Write a ``torch.save`` state dict (what accelerate < 0.25 wrote as pytorch_model.bin)."""
    state = {name: src.make().detach().contiguous() for name, src in tensors.items()}
    with _atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


# --------------------------------------------------------------------------------------------
# Stable Diffusion single-file checkpoints
# --------------------------------------------------------------------------------------------


# SDXL base's UNet (docs: ezigen-sdxl-flux.md A1): 320 channels x 1,2,4, two res blocks per level, no attention at
# the first level, SpatialTransformers of 2 and 10 layers below and 10 in the middle, 64-wide heads, 2048-d text
# context, and the 2816-d added conditioning (pooled bigG text + six size ids) that makes ComfyUI call it SDXL.
_SDXL_UNET_CONFIG: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "legacy": False,
    "use_checkpoint": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def _sd_unet_config(kind: SdKind) -> dict[str, Any]:
    """The SD1.5 / SD2.1-base / SDXL UNet hyper-parameters in ComfyUI's openaimodel vocabulary.

    SD1.5 and SD2.1 share the layout (320 channels x 1,2,4,4, two res blocks per level, one transformer
    block at the first three levels and in the middle); SD2 differs by 1024-d OpenCLIP context, 64-d
    heads and linear proj_in/proj_out. SDXL's is `_SDXL_UNET_CONFIG`.
    """
    if kind == "sdxl":
        return json.loads(json.dumps(_SDXL_UNET_CONFIG))  # a copy: ComfyUI's detection may edit it
    sd2 = kind == "sd21base"
    config: dict[str, Any] = {
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "channel_mult": [1, 2, 4, 4],
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_spatial_transformer": True,
        "use_linear_in_transformer": sd2,
        "context_dim": 1024 if sd2 else 768,
        "adm_in_channels": None,
        "legacy": False,
        "use_checkpoint": False,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    if sd2:
        config["num_head_channels"] = 64
    else:
        config["num_heads"] = 8
    return config


_UNET_PREFIX = "model.diffusion_model."  # where single-file SD checkpoints keep the UNet
_EXPECTED_CONFIG_CLASS: dict[str, str] = {"sd21base": "SD20", "sd15": "SD15", "sdxl": "SDXL"}

# The KL-f8 autoencoder shared by SD1.x, SD2.x and SDXL (SDXL's differs in its values and latent scale only).
_KL_VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def _sd_model_config(kind: SdKind) -> Any:
    """Let ComfyUI pick its model config for our UNet config, and insist it is the intended one."""
    bootstrap()
    import comfy.model_detection  # noqa: PLC0415

    config = comfy.model_detection.model_config_from_unet_config(_sd_unet_config(kind))
    expected = _EXPECTED_CONFIG_CLASS[kind]
    if config is None or type(config).__name__ != expected:
        raise RuntimeError(f"ComfyUI matched {type(config).__name__ if config else None} for {kind}, expected {expected}")
    return config


def _sd_unet_on_meta(kind: SdKind, dtype: torch.dtype = torch.float16) -> Any:
    """Build ComfyUI's BaseModel for ``kind`` on the meta device: shapes and names, no memory."""
    model_config = _sd_model_config(kind)
    model_config.set_inference_dtype(dtype, None)
    with torch.device("meta"):
        return model_config.get_model({}, "")


def state_dict_for_saving(model, clip_state_dict: dict, vae_state_dict: dict) -> dict:
    """The single-file checkpoint's state dict, as the host's ``BaseModel.state_dict_for_saving`` builds it.

    Since ComfyUI 0.12.0 its caller hands it the UNet's state dict first (``unet_state_dict``); before, it read
    the UNet itself. Told apart by the method's signature, not by a version number, so a core that backports
    either way is served too.
    """
    import inspect  # noqa: PLC0415

    takes_unet = "unet_state_dict" in inspect.signature(model.state_dict_for_saving).parameters
    unet = (model.diffusion_model.state_dict(),) if takes_unet else ()
    return model.state_dict_for_saving(*unet, clip_state_dict=clip_state_dict, vae_state_dict=vae_state_dict)


def make_sd_checkpoint(kind: str, path: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a random-weight single-file SD1.5 / SD2.1-base / SDXL checkpoint (fp16) to ``path``.

    Built from ComfyUI's own UNet, text-encoder and VAE classes and saved through the model
    config's ``state_dict_for_saving``, so the keys are exactly what ComfyUI's loader expects.
    Returns ``path``; an existing file is kept unless ``overwrite``.
    """
    if kind not in SD_FILE_NAMES:
        raise ValueError(f"kind must be one of {sorted(SD_FILE_NAMES)}, not {kind!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    sd_kind: SdKind = kind  # type: ignore[assignment]

    bootstrap()
    import comfy.ldm.models.autoencoder  # noqa: PLC0415

    dtype = torch.float16
    model = _sd_unet_on_meta(sd_kind, dtype)
    clip_class = model.model_config.clip_target().clip
    with torch.device("meta"):
        text_encoder = clip_class(device="meta", dtype=dtype)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(_KL_VAE_DDCONFIG), embed_dim=4)
    # Text encoder and VAE are made for real: their save-time conversion (e.g. SD2's q/k/v fusion)
    # needs values. The UNet (two thirds of the file) stays on meta and is generated tensor by
    # tensor while writing; saving only renames its keys.
    _materialize(text_encoder, f"{kind}/text_encoder", seed, dtype)
    _materialize(vae, f"{kind}/vae", seed, dtype)
    state = state_dict_for_saving(model, text_encoder.state_dict(), vae.state_dict())
    unet_plan = {p.name: p for p in _plan(model.diffusion_model)}
    del model, text_encoder, vae

    tensors: dict[str, TensorSource] = {}
    for key, value in state.items():
        if not value.is_meta:
            tensors[key] = TensorSource.of(value)
            continue
        plan = unet_plan[key.removeprefix(_UNET_PREFIX)]
        tensors[key] = TensorSource(
            plan.shape, dtype, lambda p=plan: _random_value(p.rule, p.shape, dtype, f"{kind}/unet", p.name, seed)
        )
    if sum(key.startswith(_UNET_PREFIX) for key in tensors) != len(unet_plan):
        raise RuntimeError("not every UNet parameter reached the saved state dict")
    metadata = {"ezigen_random_weights": "true", "kind": kind, "seed": str(seed), "made_by": "scripts/make_checkpoints.py"}
    write_safetensors(path, tensors, metadata)
    del state, tensors
    gc.collect()
    return path


# --------------------------------------------------------------------------------------------
# EZIGen official (accelerate) checkpoint folder
# --------------------------------------------------------------------------------------------


def _ldm_to_diffusers_names(ldm_keys: Sequence[str]) -> dict[str, str]:
    """Map SD2.1-base UNet keys from ComfyUI/ldm names to diffusers names, via ComfyUI's own table."""
    bootstrap()
    import comfy.utils  # noqa: PLC0415

    wanted = set(ldm_keys)
    table = comfy.utils.unet_to_diffusers(_sd_model_config("sd21base").unet_config)  # diffusers -> ldm
    out = {ldm: diffusers for diffusers, ldm in table.items() if ldm in wanted}
    missing = wanted - set(out)
    if missing or len(set(out.values())) != len(out):
        raise RuntimeError(f"ldm->diffusers map incomplete or not one-to-one; missing e.g. {sorted(missing)[:3]}")
    return out


def _base_unet_sources(sd21_checkpoint: Path | None, seed: int) -> dict[str, TensorSource]:
    """The SD2.1-base UNet as lazily produced tensors keyed by ldm name.

    From a checkpoint file the tensors are read from disk one at a time; without one they
    are generated with the same names and seeds ``make_sd_checkpoint('sd21base')`` uses.
    """
    if sd21_checkpoint is not None:
        sources = {
            key.removeprefix(_UNET_PREFIX): src
            for key, src in read_safetensors_lazily(sd21_checkpoint).items()
            if key.startswith(_UNET_PREFIX)
        }
        if not sources:
            raise ValueError(f"{sd21_checkpoint} has no {_UNET_PREFIX}* keys")
        # EZIGen is trained on SD2.1-base; an SD1.x UNet has the same key names but 768-d context.
        context = sources.get("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
        if context is None or context.shape[1] != 1024:
            raise ValueError(f"{sd21_checkpoint} is not an SD2.x checkpoint (cross-attention context is not 1024-d)")
        return sources

    dtype = torch.float16
    unet = _sd_unet_on_meta("sd21base", dtype).diffusion_model
    return {
        p.name: TensorSource(
            p.shape, dtype, lambda p=p: _random_value(p.rule, p.shape, dtype, "sd21base/unet", p.name, seed)
        )
        for p in _plan(unet)
    }


def ezigen_adapter_keys(layers: Sequence[tuple[str, int]] | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """The trained EZIGen tensors (names without DDP prefix) and their shapes, in file order: 7 per layer of
    `layers` ((diffusers prefix up to ``transformer_blocks.j``, width), in learnable_weights order; by default
    SD2.1's 16, i.e. 113 tensors) and ``learnable_weights``."""
    if layers is None:
        layers = [(f"{block}.transformer_blocks.0", c) for block, c in EZIGEN_BLOCKS]
    keys: list[tuple[str, tuple[int, ...]]] = []
    for prefix, c in layers:
        p = f"{prefix}."
        keys += [
            (p + "adapter.to_q.weight", (c, c)),
            (p + "adapter.to_k.weight", (c, c)),
            (p + "adapter.to_v.weight", (c, c)),
            (p + "adapter.to_out.0.weight", (c, c)),
            (p + "adapter.to_out.0.bias", (c,)),
            (p + "adapter_norm.weight", (c,)),
            (p + "adapter_norm.bias", (c,)),
        ]
    keys.append(("learnable_weights", (len(layers),)))
    return keys


def _adapter_value(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """fp32 adapter tensor: Gaussian weights and biases, norm weights and gates near 1.

    Nothing is exactly 0 or 1, so a loader that drops or swaps a tensor changes the output.
    """
    noise = torch.randn(shape, generator=_generator("ezigen/adapter", name, seed), dtype=torch.float32)
    if name == "learnable_weights":
        return noise.mul_(LEARNABLE_WEIGHTS_NOISE_STD).add_(1.0)
    if name.endswith("adapter_norm.weight"):
        return noise.mul_(ADAPTER_NOISE_STD).add_(1.0)
    return noise.mul_(WEIGHT_STD if name.endswith(".weight") else ADAPTER_NOISE_STD)


def make_ezigen_official_folder(
    path: Path,
    sd21_checkpoint: Path | None = None,
    prefix: str = "",
    file_format: str = "safetensors",
    *,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write an EZIGen accelerate checkpoint folder (``model.safetensors`` or ``pytorch_model.bin``).

    Keys: the whole SD2.1-base UNet under diffusers names (copied from ``sd21_checkpoint`` if
    given, else random with the same seeds as ``make_sd_checkpoint``), then the 16 x 7 adapter
    tensors and ``learnable_weights`` in fp32; ``prefix`` (e.g. ``"module."`` for multi-GPU DDP
    training) goes in front of every key. Returns the folder.
    """
    if file_format not in ("safetensors", "bin"):
        raise ValueError(f"file_format must be 'safetensors' or 'bin', not {file_format!r}")
    folder = Path(path)
    target = folder / ("model.safetensors" if file_format == "safetensors" else "pytorch_model.bin")
    if target.exists() and not overwrite:
        return folder

    base = _base_unet_sources(Path(sd21_checkpoint) if sd21_checkpoint is not None else None, seed)
    names = _ldm_to_diffusers_names(list(base))
    # Sorted, so the file is byte-identical whether the base came from a checkpoint or from seeds.
    tensors: dict[str, TensorSource] = {prefix + names[ldm]: base[ldm] for ldm in sorted(base, key=names.__getitem__)}

    for name, shape in ezigen_adapter_keys():
        block = name.split(".transformer_blocks.")[0]
        if name != "learnable_weights":
            norm_shape = tensors[f"{prefix}{block}.transformer_blocks.0.norm1.weight"].shape
            if norm_shape != shape[-1:]:
                raise RuntimeError(f"{block}: base UNet width {norm_shape} disagrees with adapter {shape}")
        tensors[prefix + name] = TensorSource(shape, torch.float32, lambda n=name, s=shape: _adapter_value(n, s, seed))

    if file_format == "safetensors":
        # accelerate's save_state writes metadata {"format": "pt"}; keep that, plus our marker.
        write_safetensors(target, tensors, {"format": "pt", "ezigen_random_weights": "true", "seed": str(seed)})
    else:
        _write_torch_bin(target, tensors)
    del tensors, base
    gc.collect()
    return folder


# --------------------------------------------------------------------------------------------
# EZIGen-SDXL adapters in upstream's layout
# --------------------------------------------------------------------------------------------


def sdxl_adapter_layers() -> list[tuple[str, int]]:
    """SDXL's 70 adapted layers as (diffusers prefix ``...transformer_blocks.j``, width), in learnable_weights order.

    Read off ComfyUI's SDXL UNet (its layers' norm1 widths) and its own diffusers key map, ordered as the pack's
    loader orders a reference file's layers, so nothing here restates the doc's table (the test does).
    """
    from ezigen_lib.checkpoint import reference_layers  # noqa: PLC0415

    bootstrap()
    import comfy.utils  # noqa: PLC0415

    widths = {p.name: p.shape[0] for p in _plan(_sd_unet_on_meta("sdxl").diffusion_model)}
    suffix = ".norm1.weight"
    prefixes = {diffusers.removesuffix(suffix): widths[ldm]
                for diffusers, ldm in comfy.utils.unet_to_diffusers(_sd_unet_config("sdxl")).items()
                if ".transformer_blocks." in diffusers and diffusers.endswith(suffix)}
    return [(prefix, prefixes[prefix]) for prefix in reference_layers([f"{p}.adapter.to_q.weight" for p in prefixes])]


def make_ezigen_sdxl_adapter(path: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write random-weight EZIGen-SDXL adapters as upstream's SDXL trainer holds them: 70 x 7 tensors under diffusers
    names plus ``learnable_weights`` [70] (491 tensors, 409,849,670 values), fp16 as its fp16 run casts them; none of
    the pack's format metadata, so loaders read it as upstream's file. Returns ``path``; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    dtype = torch.float16
    tensors = {name: TensorSource(shape, dtype, lambda n=name, s=shape: _adapter_value(n, s, seed).to(dtype))
               for name, shape in ezigen_adapter_keys(sdxl_adapter_layers())}
    return write_safetensors(path, tensors, {"format": "pt", "ezigen_random_weights": "true", "kind": "ezigen_sdxl",
                                             "seed": str(seed)})


# --------------------------------------------------------------------------------------------
# Verification through ComfyUI's own loader and sampler
# --------------------------------------------------------------------------------------------


def verify_sd_checkpoint(path: Path, *, sample: bool = True, seed: int = 0) -> dict[str, Any]:
    """Load ``path`` with ComfyUI's checkpoint loader and check it behaves like a (noisy) model.

    Reports the detected config class and model type, and checks that the text encoder, a VAE
    decode of a random latent and a 2-step 64x64 Euler sample (SDXL's with the pooled text) give finite,
    non-constant output.
    Raises AssertionError on any non-finite or degenerate result.
    """
    bootstrap()
    import comfy.sample  # noqa: PLC0415
    import comfy.sd  # noqa: PLC0415

    report: dict[str, Any] = {"path": str(path)}
    t0 = time.perf_counter()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    report["load_s"] = round(time.perf_counter() - t0, 1)
    report["config_class"] = type(model.model.model_config).__name__
    report["model_class"] = type(model.model).__name__
    report["model_type"] = model.model.model_type.name
    context_dim = model.model.model_config.unet_config["context_dim"]

    def check(label: str, t: torch.Tensor) -> None:
        t = t.float()
        report[f"{label}_std"] = float(t.std())
        assert torch.isfinite(t).all(), f"{label}: non-finite values"
        assert float(t.std()) > 1e-4, f"{label}: degenerate (std {float(t.std())})"

    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_pooled=True)
        report["text_cond_shape"] = list(cond.shape)
        check("text_cond", cond)

        pixels = vae.decode(torch.randn(1, 4, 8, 8, generator=g))
        report["vae_decode_shape"] = list(pixels.shape)
        check("vae_decode", pixels)

        if sample:
            extra = {"pooled_output": pooled} if model.model.adm_channels else {}  # SDXL's added conditioning
            positive = [[torch.randn(1, 77, context_dim, generator=g), dict(extra)]]
            negative = [[torch.randn(1, 77, context_dim, generator=g), dict(extra)]]
            latent = torch.zeros(1, 4, 8, 8)
            noise = torch.randn(1, 4, 8, 8, generator=g)
            t0 = time.perf_counter()
            out = comfy.sample.sample(model, noise, 2, 7.0, "euler", "normal", positive, negative, latent, seed=seed, disable_pbar=True)
            report["sample_s"] = round(time.perf_counter() - t0, 2)
            check("sample", out)
    return report


# --------------------------------------------------------------------------------------------
# CLIP ViT-B/32 vision tower (the reference's autostop model)
# --------------------------------------------------------------------------------------------

CLIP_B32_FILE_NAME = "clip_vit_b32_random.safetensors"


def make_clip_vit_b32(path: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """A random-weight OpenAI CLIP ViT-B/32 vision tower in the transformers layout ComfyUI reads."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    bootstrap()
    import comfy.clip_model  # noqa: PLC0415
    import comfy.ops  # noqa: PLC0415

    config = json.loads((REPO_ROOT / "ezigen_lib" / "clip_vision_vit_b32.json").read_text())
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.manual_cast)
    _materialize(model, "clip_vit_b32", seed, torch.float16)
    metadata = {"ezigen_random_weights": "true", "kind": "clip_vit_b32", "seed": str(seed)}
    write_safetensors(path, {k: TensorSource.of(v) for k, v in model.state_dict().items()}, metadata)
    return path


# --------------------------------------------------------------------------------------------
# FLUX.1 stand-ins: diffusion model, CLIP-L text encoder, 16-channel VAE
# --------------------------------------------------------------------------------------------

FLUX_FILE_NAMES: dict[str, str] = {
    "flux_unet": "flux_dev_random.safetensors",
    "flux_clip_l": "clip_l_random.safetensors",
    "flux_vae": "flux_ae_random.safetensors",
}
# ComfyUI's model detection fixes FLUX.1's 24 heads of 16 + 56 + 56 rotary dimensions, so the width must be the
# real 3072; only the depth is read from the file. One double-stream and one single-stream block (instead of 19
# and 38) keep every code path at 1/22 of the parameters (0.53 B, 1.1 GB in bf16).
FLUX_HIDDEN = 3072
FLUX_HEADS = 24
# The text width: CLIP-L's 768, not T5-XXL's 4096. ComfyUI builds FLUX's T5 from a fixed config
# (comfy/text_encoders/t5_config_xxl.json: 24 layers, d_model 4096, 4.8 B parameters) whatever the file holds,
# so no small T5 stand-in exists; the tests feed this model CLIP-L's hidden states (CLIPLoader) instead.
FLUX_CONTEXT = 768


def _flux_detection_keys(context_dim: int) -> dict[str, torch.Tensor]:
    """The keys and shapes ComfyUI's `detect_unet_config` reads to call a diffusion model FLUX.1-dev
    (meta tensors: shapes, no memory)."""
    head = FLUX_HIDDEN // FLUX_HEADS

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta")

    return {
        "img_in.weight": meta(FLUX_HIDDEN, 16 * 2 * 2),
        "txt_in.weight": meta(FLUX_HIDDEN, context_dim),
        "vector_in.in_layer.weight": meta(FLUX_HIDDEN, 768),
        "guidance_in.in_layer.weight": meta(FLUX_HIDDEN, 256),
        "double_blocks.0.img_attn.norm.key_norm.scale": meta(head),
        "single_blocks.0.norm.key_norm.scale": meta(head),
    }


def flux_model_config(context_dim: int = FLUX_CONTEXT) -> Any:
    """ComfyUI's own model config for the stand-in, found by its own detection; refused unless it is FLUX.1-dev."""
    bootstrap()
    import comfy.model_detection  # noqa: PLC0415

    config = comfy.model_detection.model_config_from_unet(_flux_detection_keys(context_dim), "")
    if config is None or type(config).__name__ != "Flux" or not config.unet_config.get("guidance_embed"):
        raise RuntimeError(f"ComfyUI matched {type(config).__name__ if config else None} for the FLUX stand-in, "
                           "expected Flux (FLUX.1-dev)")
    return config


def _flux_init_rule(name: str) -> InitRule:
    """RMSNorm scales start at 1 (a random 0.02 scale would silence the attention), biases at 0."""
    if name.endswith((".scale", "_norm.weight")):
        return "ones"
    return "zeros" if name.endswith(".bias") else "normal"


def _flux_file_key(model_config: Any, name: str) -> str:
    """The key a FLUX file keeps the parameter `name` under. FLUX files name the RMSNorm scales `..._norm.scale`;
    newer cores (0.28.2) call the parameter `..._norm.weight` and rename on load. Written the files' way, so a
    stand-in made on any host loads on every host (they share the model cache)."""
    if name.endswith("_norm.weight"):
        scale = name[: -len(".weight")] + ".scale"
        if name in model_config.process_unet_state_dict({scale: None}):  # this core renames scale -> weight
            return scale
    return name


def make_flux_unet(path: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """A random-weight FLUX.1-dev diffusion model (bare keys, bf16) that UNETLoader detects as Flux."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    model_config = flux_model_config()
    dtype = torch.bfloat16
    model_config.set_inference_dtype(dtype, None)
    with torch.device("meta"):
        diffusion_model = model_config.get_model({}, "").diffusion_model
    shapes = {_flux_file_key(model_config, name): tuple(p.shape) for name, p in diffusion_model.named_parameters()}
    if any(True for _ in diffusion_model.named_buffers()):
        raise RuntimeError("the FLUX model has buffers; no init rule for them")
    del diffusion_model
    tensors = {name: TensorSource(shape, dtype, lambda n=name, s=shape: _random_value(_flux_init_rule(n), s, dtype,
                                                                                      "flux/unet", n, seed))
               for name, shape in shapes.items()}
    write_safetensors(path, tensors, {"ezigen_random_weights": "true", "kind": "flux_unet", "seed": str(seed)})
    return path


def make_clip_l(path: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """A random-weight CLIP-L text encoder in the transformers layout CLIPLoader / DualCLIPLoader read."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    bootstrap()
    from comfy import sd1_clip  # noqa: PLC0415

    dtype = torch.float16
    with torch.device("meta"):
        encoder = sd1_clip.SDClipModel(device="meta", dtype=dtype).transformer
    _materialize(encoder, "clip_l", seed, dtype)
    metadata = {"ezigen_random_weights": "true", "kind": "clip_l", "seed": str(seed)}
    write_safetensors(path, {k: TensorSource.of(v) for k, v in encoder.state_dict().items()}, metadata)
    return path


# FLUX.1's autoencoder: the SD layout (128 channels x 1, 2, 4, 4) with a 16-channel latent and no quant convs.
_FLUX_VAE_DDCONFIG: dict[str, Any] = {**_KL_VAE_DDCONFIG, "z_channels": 16}


def make_flux_vae(path: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """A random-weight 16-channel FLUX.1 VAE (encoder.* / decoder.* keys, no quant convs) for VAELoader."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    bootstrap()
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder  # noqa: PLC0415

    dtype = torch.float16
    with torch.device("meta"):
        halves = {"encoder": Encoder(**_FLUX_VAE_DDCONFIG), "decoder": Decoder(**_FLUX_VAE_DDCONFIG)}
    tensors: dict[str, TensorSource] = {}
    for prefix, module in halves.items():
        _materialize(module, f"flux_vae/{prefix}", seed, dtype)
        tensors.update({f"{prefix}.{k}": TensorSource.of(v) for k, v in module.state_dict().items()})
    write_safetensors(path, tensors, {"ezigen_random_weights": "true", "kind": "flux_vae", "seed": str(seed)})
    return path


def make_flux(out: Path = DEFAULT_OUT, *, overwrite: bool = False) -> dict[str, Path]:
    """The three FLUX stand-ins under ``out``: {"flux_unet", "flux_clip_l", "flux_vae": path}."""
    makers = {"flux_unet": make_flux_unet, "flux_clip_l": make_clip_l, "flux_vae": make_flux_vae}
    return {kind: makers[kind](out / FLUX_FILE_NAMES[kind], overwrite=overwrite) for kind in FLUX_FILE_NAMES}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

ALL_KINDS = ("sd21base", "sd15", "ezigen", "clip_b32", "flux", "sdxl", "ezigen_sdxl")


DEFAULT_KINDS = ("sd21base", "sd15", "ezigen", "clip_b32")  # FLUX (1.5 GB), SDXL (7.7 GB) where a test asks


def make_sdxl(out: Path = DEFAULT_OUT, *, overwrite: bool = False) -> dict[str, Path]:
    """The SDXL stand-ins under ``out``: {"sdxl": the checkpoint, "ezigen_sdxl": the adapter file}."""
    return make_all(out, ("sdxl", "ezigen_sdxl"), overwrite=overwrite)


def make_all(out: Path = DEFAULT_OUT, only: Sequence[str] = DEFAULT_KINDS, *, overwrite: bool = False) -> dict[str, Path]:
    """Make the requested stand-ins under ``out``; the EZIGen folder reuses the SD2.1 file if present."""
    unknown = set(only) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {ALL_KINDS}")
    made: dict[str, Path] = {}
    for kind in ("sd21base", "sd15"):
        if kind in only:
            made[kind] = make_sd_checkpoint(kind, out / SD_FILE_NAMES[kind], overwrite=overwrite)
    if "ezigen" in only:
        sd21 = out / SD_FILE_NAMES["sd21base"]
        made["ezigen"] = make_ezigen_official_folder(
            out / EZIGEN_FOLDER, sd21_checkpoint=sd21 if sd21.exists() else None, overwrite=overwrite
        )
    if "clip_b32" in only:
        made["clip_b32"] = make_clip_vit_b32(out / CLIP_B32_FILE_NAME, overwrite=overwrite)
    if "flux" in only:
        made.update(make_flux(out, overwrite=overwrite))
    if "sdxl" in only:
        made["sdxl"] = make_sd_checkpoint("sdxl", out / SD_FILE_NAMES["sdxl"], overwrite=overwrite)
    if "ezigen_sdxl" in only:
        made["ezigen_sdxl"] = make_ezigen_sdxl_adapter(out / EZIGEN_SDXL_FILE_NAME, overwrite=overwrite)
    return made


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints ``KIND PATH`` per made item on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache folder (default {DEFAULT_OUT})")
    parser.add_argument("--only", default=",".join(ALL_KINDS), help="comma-separated subset of " + ",".join(ALL_KINDS))
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    parser.add_argument("--verify", action="store_true", help="load the SD/SDXL checkpoints with ComfyUI and run a 2-step sample")
    args = parser.parse_args(argv)

    print(BANNER, file=sys.stderr, flush=True)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(only) - set(ALL_KINDS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(ALL_KINDS)})")
    t0 = time.perf_counter()
    made = make_all(args.out, only, overwrite=args.force)
    for kind, p in made.items():
        print(f"{kind} {p}", flush=True)
    print(f"[make_checkpoints] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    if args.verify:
        for kind in ("sd21base", "sd15", "sdxl"):
            if kind in made:
                print(f"[verify] {kind}: {json.dumps(verify_sd_checkpoint(made[kind]))}", file=sys.stderr, flush=True)
    print(BANNER, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

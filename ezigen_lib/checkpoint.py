"""Reading and writing EZIGen adapter weights.

Two on-disk forms are accepted:
- the reference release: an accelerate checkpoint folder (``model.safetensors``, or
  ``pytorch_model.bin`` from older accelerate) holding the whole main UNet plus the adapters,
  keys possibly prefixed ``module.`` (multi-GPU training);
- upstream's SDXL outputs: ``diffusion_pytorch_model.bin`` (the whole main UNet, diffusers names) on its
  own or in an accelerate checkpoint folder;
- our adapter-only safetensors (written by ``python -m ezigen_lib.convert``), with metadata, which records
  the family (ComfyUI's config name) and the adapter residual; a reference file's family comes from its
  layout (family.reference_layout).

Only the adapter tensors (7 per transformer layer) and ``learnable_weights`` are kept. The file declares its
own layout: ``learnable_weights`` has one entry per layer, the reference's key names say where each layer sits
(``<diffusers block>.transformer_blocks.<j>.adapter...``, ordered as a forward pass meets them), the tensors
give the widths; whether that layout fits a model is the family's question (family.py), asked when the
encoder is loaded. Pickled files are loaded with
``weights_only=True``: a file that needs code execution is refused, never run.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import EZIGenError, exception_text, public_error, shown as echo
from .family import FAMILY_NAME, RESIDUALS, reference_layout

FORMAT_NAME = "ezigen-adapter"
FORMAT_VERSION = "1"
REFERENCE_BASE = "sd2.1-base"
REFERENCE_HEAD_DIM = 64  # SD2.1-base attention heads are 64 wide; the adapter keeps that split
REFERENCE_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")

WHERE_FILES_GO = (
    "Put the official EZIGen checkpoint (the checkpoint-200000 folder of the EZIGen release, linked from "
    "github.com/ZichengDuan/EZIGen, or its model.safetensors) or an adapter file made by "
    "`python -m ezigen_lib.convert CHECKPOINT OUT.safetensors` into ComfyUI/models/ezigen/."
)

# reference tensor name inside a block -> our name inside blocks.{k}
REFERENCE_TENSOR_NAMES = {
    "adapter.to_q.weight": "to_q.weight",
    "adapter.to_k.weight": "to_k.weight",
    "adapter.to_v.weight": "to_v.weight",
    "adapter.to_out.0.weight": "to_out.0.weight",
    "adapter.to_out.0.bias": "to_out.0.bias",
    "adapter_norm.weight": "norm.weight",
    "adapter_norm.bias": "norm.bias",
}
LEARNABLE_WEIGHTS = "learnable_weights"


@public_error
class AdapterFileError(EZIGenError, ValueError):
    """A file that cannot serve as EZIGen adapter weights; the message says what to do."""


@dataclass(frozen=True)
class AdapterInfo:
    widths: tuple[int, ...]
    head_dim: int
    base_model: str
    source: str
    family: str | None = None  # ComfyUI's config name of the UNet it was made for (SD20, SDXL); None: unknown
    residual: str = "double"  # family.RESIDUALS: how its output joins the block (weights cannot tell)


@dataclass
class AdapterWeights:
    state_dict: dict[str, torch.Tensor]
    info: AdapterInfo
    metadata: dict[str, str] = field(default_factory=dict)


_CANONICAL = re.compile(r"blocks\.([0-9]{1,4})\.(.+)")
_REFERENCE = re.compile(r"(.+\.transformer_blocks\.[0-9]{1,4})\.(adapter\..+|adapter_norm\..+)")
_REFERENCE_BLOCK = re.compile(r"(down_blocks|mid_block|up_blocks)(?:\.([0-9]+))?\.attentions\.([0-9]+)"
                              r"\.transformer_blocks\.([0-9]+)")
_SECTIONS = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def canonical_key(layer: int, reference_tensor: str) -> str:
    return f"blocks.{layer}.{REFERENCE_TENSOR_NAMES[reference_tensor]}"


def reference_key(prefix: str, reference_tensor: str) -> str:
    """The reference checkpoint's name of a tensor of the layer at `prefix` (a family layer's
    ``reference_prefix``, e.g. 'down_blocks.0.attentions.0.transformer_blocks.0')."""
    return f"{prefix}.{reference_tensor}"


def reference_layers(keys: list[str]) -> list[str]:
    """The layer prefixes that a reference checkpoint's adapter keys name, in the order a forward pass meets
    them (down blocks by level and attention, the middle block, up blocks; layer 0 first inside each)."""
    prefixes = set()
    for key in keys:
        match = _REFERENCE.fullmatch(key)
        if match and match.group(2) in REFERENCE_TENSOR_NAMES and _REFERENCE_BLOCK.fullmatch(match.group(1)):
            prefixes.add(match.group(1))

    def order(prefix: str) -> tuple[int, ...]:
        section, level, attention, layer = _REFERENCE_BLOCK.fullmatch(prefix).groups()
        return _SECTIONS[section], int(level or 0), int(attention), int(layer)

    return sorted(prefixes, key=order)


def _fail(shown: str, problem: str) -> AdapterFileError:
    return AdapterFileError(f"EZIGen adapter file '{shown}': {problem}. {WHERE_FILES_GO}")


def resolve_checkpoint_path(path: str | os.PathLike, shown: str | None = None) -> Path:
    """A folder means an accelerate checkpoint folder: pick its model file."""
    path = Path(path)
    shown = shown or str(path)
    if path.is_dir():
        for name in REFERENCE_FILES:
            if (path / name).is_file():
                return path / name
        raise _fail(shown, f"the folder holds neither {' nor '.join(REFERENCE_FILES)}")
    if not path.is_file():
        raise _fail(shown, "no such file")
    return path


def file_fingerprint(path: str | os.PathLike) -> tuple:
    """(real path, size, mtime in ns) of the file a loader would read (a checkpoint folder's model file).

    ComfyUI reuses a node's cached output while this stays the same, so a file replaced under the same
    name is loaded again instead of its old weights being served.
    """
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in REFERENCE_FILES if (path / n).is_file()), path)
    try:
        stat = path.stat()
    except OSError:
        return (str(path), None, None)
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _wanted_keys(keys: list[str]) -> dict[str, str]:
    """Every adapter key of the file (canonical or the reference's names) -> canonical key."""
    ours = set(REFERENCE_TENSOR_NAMES.values())
    wanted = {LEARNABLE_WEIGHTS: LEARNABLE_WEIGHTS}
    for key in keys:
        match = _CANONICAL.fullmatch(key)
        if match and match.group(2) in ours:
            wanted[key] = key
    for k, prefix in enumerate(reference_layers(keys)):
        for ref_name in REFERENCE_TENSOR_NAMES:
            wanted[reference_key(prefix, ref_name)] = canonical_key(k, ref_name)
    return wanted


def _read_safetensors(path: Path, shown: str) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            all_keys = list(f.keys())
            wanted = _wanted_keys([_strip_module(k) for k in all_keys])
            tensors = {}
            for key in all_keys:
                canonical = wanted.get(_strip_module(key))
                if canonical is not None:
                    tensors[canonical] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types for damaged headers/data
        raise _fail(shown, f"it is damaged or not a safetensors file ({exception_text(exc, path, shown)})") from exc
    return tensors, all_keys, metadata


def _read_pickle(path: Path, shown: str) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _fail(shown, "it is a pickle that holds more than plain tensors; it was refused without "
                           "running it (EZIGen loads weights only)") from exc
    except Exception as exc:
        raise _fail(shown, f"it is damaged or not a PyTorch weights file ({exception_text(exc, path, shown)})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _fail(shown, f"expected a dict of tensors, found {type(obj).__name__}")
    wanted = _wanted_keys([_strip_module(k) for k in obj if isinstance(k, str)])
    tensors = {wanted[_strip_module(k)]: v for k, v in obj.items()
               if isinstance(k, str) and _strip_module(k) in wanted and isinstance(v, torch.Tensor)}
    return tensors, [k for k in obj if isinstance(k, str)], {}


def _describe_foreign(path: str, all_keys: list[str]) -> AdapterFileError:
    stripped = [_strip_module(k) for k in all_keys]
    adapter_keys = [k for k in stripped if ".adapter." in k or ".adapter_norm." in k]
    if adapter_keys:
        blocks = sorted({k.split(".adapter")[0] for k in adapter_keys})
        return _fail(path, f"it holds adapters for {len(blocks)} transformer blocks in another layout (e.g. "
                           f"'{blocks[0]}') with most of their tensors missing; EZIGen variants other than the "
                           "released one are not supported")
    sample = ", ".join(stripped[:3]) if stripped else "no tensors at all"
    example = "down_blocks.0.attentions.0.transformer_blocks.0"
    return _fail(path, f"it is not an EZIGen checkpoint: none of its {len(stripped)} tensors are EZIGen "
                       f"adapters (expected keys like '{reference_key(example, 'adapter.to_q.weight')}' or "
                       f"'{canonical_key(0, 'adapter.to_q.weight')}'; found {sample})")


def _declared_layers(tensors: dict[str, torch.Tensor]) -> int:
    """How many transformer layers the file's adapter keys name."""
    return 1 + max((int(_CANONICAL.fullmatch(k).group(1)) for k in tensors if k != LEARNABLE_WEIGHTS), default=-1)


def _validate(path: str, tensors: dict[str, torch.Tensor], all_keys: list[str]) -> tuple[int, ...]:
    """The file's layer widths, after checking it holds every tensor of every layer it declares."""
    if not tensors:
        raise _describe_foreign(path, all_keys)
    prefixes = reference_layers([_strip_module(k) for k in all_keys])  # empty for our own layout
    count = _declared_layers(tensors)
    expected = {LEARNABLE_WEIGHTS} | {canonical_key(k, n) for k in range(count) for n in REFERENCE_TENSOR_NAMES}
    missing = sorted(expected - set(tensors))
    if missing:
        lw = next((k for k in all_keys if _strip_module(k) == LEARNABLE_WEIGHTS), None)
        if len(missing) > len(expected) // 2 or lw is None and len(missing) == len(expected):
            raise _describe_foreign(path, all_keys)
        ours = {name: ref for ref, name in REFERENCE_TENSOR_NAMES.items()}

        def named(key: str) -> str:
            match = _CANONICAL.fullmatch(key)
            if match is None or int(match.group(1)) >= len(prefixes):  # learnable_weights, or our own layout
                return key
            return f"{key} = '{reference_key(prefixes[int(match.group(1))], ours[match.group(2)])}'"

        shown = ", ".join(map(named, missing[:4])) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise _fail(path, f"{len(missing)} of the {len(expected)} adapter tensors are missing ({shown})")
    lw = tensors[LEARNABLE_WEIGHTS]
    if tuple(lw.shape) != (count,):
        raise _fail(path, f"learnable_weights has shape {tuple(lw.shape)}, expected ({count},): one weight per "
                          f"transformer layer, and the file holds adapters for {count}")
    widths = tuple(tensors[canonical_key(k, "adapter.to_q.weight")].shape[0] for k in range(count))
    for k, width in enumerate(widths):
        for ref_name in REFERENCE_TENSOR_NAMES:
            key = canonical_key(k, ref_name)
            t = tensors[key]
            want = (width, width) if ref_name.endswith("weight") and "norm" not in ref_name else (width,)
            if tuple(t.shape) != want:
                where = f"layer {k}, {prefixes[k]}" if k < len(prefixes) else f"layer {k}"
                raise _fail(path, f"tensor '{key}' has shape {tuple(t.shape)}, expected {want} ({where}: its "
                                  f"to_q is {width} wide)")
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise _fail(path, f"tensor '{key}' has dtype {t.dtype}, expected floating point")
        if not bool(torch.isfinite(t).all()):
            raise _fail(path, f"tensor '{key}' contains NaN or infinite values")
    return widths


def load_adapter(path: str | os.PathLike, shown: str | None = None) -> AdapterWeights:
    """Load and validate adapter weights from any accepted file or checkpoint folder.

    `shown` is how messages name the file (the nodes pass 'models/ezigen/NAME', never the server's
    absolute path); by default the path as given.
    """
    given = Path(path)
    shown = shown or str(given)
    path = resolve_checkpoint_path(given, shown)
    if path != given:
        shown = f"{shown}/{path.name}"  # a folder: name the file picked in it
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        tensors, all_keys, metadata = _read_safetensors(path, shown)
    else:
        tensors, all_keys, metadata = _read_pickle(path, shown)
    ours = metadata.get("format") == FORMAT_NAME
    layout = None if ours else reference_layout(reference_layers([_strip_module(k) for k in all_keys]))
    if layout is not None and layout.refused:
        raise _fail(shown, layout.refused)
    widths = _validate(shown, tensors, all_keys)
    if ours:
        info = _read_metadata(shown, metadata, widths)
    else:  # a reference file: its layout says the family (unknown layouts: as SD2.1's release, family unknown)
        info = AdapterInfo(widths=widths, head_dim=REFERENCE_HEAD_DIM, source=f"{path.parent.name}/{path.name}",
                           base_model=layout.base_model if layout else REFERENCE_BASE,
                           family=layout.family if layout else None,
                           residual=layout.residual if layout else AdapterInfo.residual)
    return AdapterWeights(state_dict=tensors, info=info, metadata=metadata)


_NAME_TEXT = re.compile(r"[\w.+\-/ ()]{1,200}")  # base_model / source: short plain names
_DECIMAL = re.compile(r"[0-9]{1,9}")


def _read_metadata(shown: str, metadata: dict[str, str], widths: tuple[int, ...]) -> AdapterInfo:
    """Every field of our format's metadata checked, each error naming the file and the field."""
    def bad(field_name: str, expected: str) -> AdapterFileError:
        value = metadata.get(field_name)
        shown_value = value if value is None or len(value) <= 60 else value[:60] + "..."
        return _fail(shown, f"its metadata field {field_name}={shown_value!r} is invalid: expected {expected} (the "
                            "file was edited or written by another tool; re-create it with `python -m "
                            "ezigen_lib.convert`)")

    if metadata.get("format_version") != FORMAT_VERSION:
        raise _fail(shown, f"format version {echo(metadata.get('format_version'))} is not supported (expected "
                           f"{FORMAT_VERSION!r}); update the node pack")
    head_text = metadata.get("head_dim", str(REFERENCE_HEAD_DIM))
    if not _DECIMAL.fullmatch(head_text) or int(head_text) < 1:
        raise bad("head_dim", "a positive whole number of channels per attention head, e.g. 64")
    head_dim = int(head_text)
    uneven = sorted({w for w in widths if w % head_dim})
    if uneven:
        raise bad("head_dim", f"a number that divides every block width (it does not divide {uneven})")
    if "widths" in metadata:
        parts = metadata["widths"].split(",")
        if len(parts) != len(widths) or not all(_DECIMAL.fullmatch(p) for p in parts):
            raise bad("widths", f"{len(widths)} comma-separated whole numbers")
        if tuple(int(p) for p in parts) != widths:
            raise bad("widths", f"the widths of the file's own tensors, {','.join(map(str, widths))}")
    for field_name in ("base_model", "source"):
        if field_name in metadata and not _NAME_TEXT.fullmatch(metadata[field_name]):
            raise bad(field_name, "a short plain name (letters, digits, . _ - + / space, at most 200 characters)")
    if "training_steps" in metadata and not _DECIMAL.fullmatch(metadata["training_steps"]):
        raise bad("training_steps", "a whole number of steps")
    if "family" in metadata and not FAMILY_NAME.fullmatch(metadata["family"]):
        raise bad("family", "ComfyUI's model family name of the base, e.g. SD20 or SDXL")
    if metadata.get("residual", AdapterInfo.residual) not in RESIDUALS:
        raise bad("residual", f"one of {', '.join(RESIDUALS)} (how the adapter's output joins its block)")
    return AdapterInfo(widths=widths, head_dim=head_dim, base_model=metadata.get("base_model", REFERENCE_BASE),
                       source=metadata.get("source", shown.rsplit("/", 1)[-1]), family=metadata.get("family"),
                       residual=metadata.get("residual", AdapterInfo.residual))


def save_adapter(weights: AdapterWeights, out_path: str | os.PathLike, dtype: torch.dtype | None = None,
                 extra_metadata: dict[str, str] | None = None) -> Path:
    """Write an adapter-only safetensors with the metadata that `load_adapter` reads back."""
    out_path = Path(out_path)
    sd = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in weights.state_dict.items()}
    info = weights.info
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "base_model": info.base_model,
        "head_dim": str(info.head_dim),
        "widths": ",".join(map(str, info.widths)),
        "source": info.source,
        "residual": info.residual,
        **({"family": info.family} if info.family else {}),
        **(extra_metadata or {}),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    save_file(sd, str(tmp), metadata=metadata)
    os.replace(tmp, out_path)
    return out_path

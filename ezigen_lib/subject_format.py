"""The EZIGen subject file's format: an encoded subject (the features of one Encode Subject run) on disk, written
as bytes and read back with every check.

A subject is costly to make (a VAE pass and a UNet pass over every subject image) and is the same every
time for the same images, prompt and seed, so it can be saved once and loaded in later workflows. The
file is a plain safetensors (no pickles):

- tensors ``features.0`` .. ``features.<n-1>``, one per transformer layer of the encoder's family (family.py):
  layer k's tokens, (1, images * HW_k, C_k), exactly as Encode Subject keeps them (fp16), so a loaded subject gives bit-identical results to the fresh one;
- metadata (strings): ``format`` = ``ezigen-subject``, ``format_version``, ``family`` (ComfyUI's model
  family of the encoder UNet, e.g. SD20), ``widths`` (the n feature widths), ``adapter`` (the adapter
  file the encoder was loaded with, as Load EZIGen Encoder lists it), ``resolution``, ``image_count`` and
  ``subject_prompt`` (the subject's words when the user gave them; may be empty).

Both ends are bounded so that a file can neither hurt nor flood a message: the features must be finite,
the adapter name is at most 1024 characters, the words 2000, all metadata 16 KiB, and text that is not valid
Unicode (lone surrogates from a broken JSON escape) is refused. Where a subject is saved, under which name and
how the write is made safe: subject_saving.py.

The layout (family and widths) decides whether a subject fits an encoder: SD1.5 and SD2.1 have the same
widths but different features, so the family is part of it. The adapter name is a record, not a rule.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

import comfy.model_management

from .capture import FEATURE_DTYPE, SubjectFeatures
from .checkpoint import FORMAT_NAME as ADAPTER_FORMAT_NAME
from .errors import EZIGenError, cut, exception_text, public_error, shown as shown_value
from .family import FAMILY_NAME, model_family_name

log = logging.getLogger("EZIGen")

FORMAT_NAME = "ezigen-subject"
FORMAT_VERSION = "1"
MAX_LAYERS = 1024  # features a subject file may hold (SD1.x/SD2.x: 16, SDXL: 70)
METADATA_FIELDS = ("format", "format_version", "family", "widths", "adapter", "resolution", "image_count",
                   "subject_prompt")
WHERE_SUBJECTS_COME_FROM = ("Subject files are written by Save EZIGen Subject (Encode Subject -> Save EZIGen "
                            "Subject) into models/ezigen_subjects.")
MAX_ADAPTER_NAME = 1024  # characters: the adapter file's name as Load EZIGen Encoder lists it
MAX_SUBJECT_PROMPT = 2000  # characters: the subject's words (CLIP reads 77 tokens)
MAX_METADATA = 16384  # characters of all metadata keys and values together

_FAMILY = FAMILY_NAME
_DECIMAL = re.compile(r"[0-9]{1,9}")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no character, no UTF-8 encoding


@public_error
class SubjectFileError(EZIGenError, ValueError):
    """A subject file that cannot be written or read, or that does not fit the encoder; the message says why."""


@dataclass(frozen=True)
class SubjectLayout:
    """What a subject must match: the encoder UNet's model family and its feature widths."""
    family: str
    widths: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.family} (widths {'/'.join(str(w) for w in sorted(set(self.widths)))})"


def subject_layout(subject: SubjectFeatures) -> SubjectLayout:
    return SubjectLayout(str(subject.family), tuple(int(f.shape[-1]) for f in subject.features))


def encoder_layout(encoder) -> SubjectLayout:
    """The layout of the subjects an EZIGEN_ENCODER makes (Load EZIGen Encoder checked its widths)."""
    return SubjectLayout(model_family_name(encoder.model), tuple(encoder.info.widths))


def feature_keys(count: int) -> tuple[str, ...]:
    """The tensor names of a subject of `count` features."""
    return tuple(f"features.{k}" for k in range(count))


def _fail(shown: str, problem: str) -> SubjectFileError:
    return SubjectFileError(f"EZIGen subject file '{shown}': {problem}. {WHERE_SUBJECTS_COME_FROM}")


# -- writing ----------------------------------------------------------------------------------------

def subject_metadata(subject: SubjectFeatures, subject_prompt: str = "") -> dict[str, str]:
    """The file's metadata; refuses a subject that does not say which encoder made it."""
    if not subject.family or not subject.adapter:
        raise SubjectFileError(
            "The subject does not say which encoder made it (its model family or adapter is unknown), so a saved "
            "file could not refuse an encoder of another layout: connect the subject from Encode Subject (EZIGen) "
            "or Load EZIGen Subject.")
    if not 1 <= len(subject.features) <= MAX_LAYERS:
        raise SubjectFileError(f"The subject has {len(subject.features)} features, expected 1 to {MAX_LAYERS}.")
    if not _FAMILY.fullmatch(str(subject.family)) or len(subject.adapter) > MAX_ADAPTER_NAME:
        raise SubjectFileError(f"The subject's encoder is recorded as family {shown_value(subject.family)}, adapter "
                               f"{shown_value(subject.adapter)}: a family of at most 64 letters, digits and '_.+-' and "
                               f"an adapter name of at most {MAX_ADAPTER_NAME} characters are expected; encode the "
                               "subject with Encode Subject (EZIGen).")
    surrogate = LONE_SURROGATE.search(subject_prompt or "")
    if surrogate is not None:  # safetensors keeps metadata as UTF-8, which has no encoding for it
        raise SubjectFileError(f"subject_prompt {shown_value(subject_prompt)} holds a lone surrogate (U+"
                               f"{ord(surrogate.group()):04X} at character {surrogate.start() + 1}), which is not a "
                               "character (a script sent a broken \\u escape): send the words as plain Unicode text.")
    if len(subject_prompt or "") > MAX_SUBJECT_PROMPT:
        raise SubjectFileError(f"subject_prompt is {len(subject_prompt)} characters, more than the "
                               f"{MAX_SUBJECT_PROMPT} a subject file keeps: give the subject's words only, e.g. "
                               "'a dog'.")
    for key, feature in zip(feature_keys(len(subject.features)), subject.features):
        require_finite_features(key, feature, "The subject to save")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "family": subject.family,
        "widths": ",".join(str(int(f.shape[-1])) for f in subject.features),
        "adapter": subject.adapter,
        "resolution": str(int(subject.resolution)),
        "image_count": str(int(subject.image_count)),
        "subject_prompt": subject_prompt or "",
    }


def subject_file_bytes(subject: SubjectFeatures, subject_prompt: str = "") -> bytes:
    """The whole file: contiguous CPU copies of the features, unchanged in dtype and values."""
    metadata = subject_metadata(subject, subject_prompt)
    keys = feature_keys(len(subject.features))
    tensors = {key: f.detach().to("cpu").contiguous() for key, f in zip(keys, subject.features)}
    return safetensors_bytes(tensors, metadata)


def require_finite_features(key: str, feature: torch.Tensor, what: str) -> None:
    """Refuse features holding NaN or infinity, naming the tensor: the stock samplers would turn them
    into a black image and the EZIGen Sampler into an error that blames the model's precision."""
    if not bool(torch.isfinite(feature).all()):
        raise SubjectFileError(f"{what} holds NaN or infinite values in tensor '{key}': a subject's features are "
                               "finite; encode the subject again with Encode Subject (EZIGen) (in fp32, e.g. "
                               "--force-fp32, if the encoder overflows).")


# -- reading ----------------------------------------------------------------------------------------

def _field(shown: str, metadata: dict[str, str], name: str, pattern: re.Pattern | None, expected: str,
           longest: int = 64) -> str:
    value = metadata.get(name)
    if value is None or len(value) > longest or (pattern is not None and not pattern.fullmatch(value)):
        too_long = value is not None and len(value) > longest
        what = f"is {len(value)} characters, over {longest}" if too_long else "is invalid"
        raise _fail(shown, f"its metadata field {name}={shown_value(value)} {what}: expected {expected} (the file was "
                           "edited or written by another tool)")
    return value


def _read_metadata(shown: str, metadata: dict[str, str], keys: list[str]) -> dict[str, str]:
    size = sum(len(k) + len(v) for k, v in metadata.items())
    if size > MAX_METADATA:
        raise _fail(shown, f"its metadata is {size} characters, more than the {MAX_METADATA} a subject file holds (the "
                           "file was edited or written by another tool)")
    kind = metadata.get("format")
    if kind == ADAPTER_FORMAT_NAME:
        raise _fail(shown, "it is an EZIGen adapter, not a subject: put it in models/ezigen and load it with Load "
                           "EZIGen Encoder")
    if kind != FORMAT_NAME:
        sample = ", ".join(shown_value(k) for k in keys[:3]) if keys else "no tensors at all"
        raise _fail(shown, f"it is not an EZIGen subject (its metadata has no format '{FORMAT_NAME}'; it holds "
                           f"{len(keys)} tensors: {sample})")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(shown, f"it is subject format version {shown_value(version)}; this version of ComfyUI-EZIGen "
                           f"reads version {FORMAT_VERSION} (update the pack, or save the subject again with this one)")
    _field(shown, metadata, "family", _FAMILY, "a model family name such as SD20")
    _field(shown, metadata, "widths", re.compile(r"[0-9]{1,6}(,[0-9]{1,6}){0,%d}" % (MAX_LAYERS - 1)),
           f"1 to {MAX_LAYERS} comma-separated widths, one per feature", MAX_LAYERS * 7)
    for name in ("resolution", "image_count"):
        if int(_field(shown, metadata, name, _DECIMAL, "a positive whole number")) < 1:
            raise _fail(shown, f"its metadata field {name}={shown_value(metadata[name])} is invalid: expected a "
                               "positive number")
    _field(shown, metadata, "adapter", None, "the adapter file's name", MAX_ADAPTER_NAME)
    _field(shown, metadata, "subject_prompt", None, "the subject's words (may be empty)", MAX_SUBJECT_PROMPT)
    return {name: metadata[name] for name in METADATA_FIELDS}


def _check_features(shown: str, tensors: dict[str, torch.Tensor], widths: tuple[int, ...], images: int) -> None:
    for k, key in enumerate(feature_keys(len(widths))):
        t = tensors[key]
        if t.dtype != FEATURE_DTYPE:
            raise _fail(shown, f"tensor '{key}' is {t.dtype}, expected {FEATURE_DTYPE} (as Encode Subject keeps "
                               "subject features)")
        want = f"(1, tokens, {widths[k]}) with tokens a multiple of the {images} image(s)"
        if t.ndim != 3 or t.shape[0] != 1 or t.shape[2] != widths[k] or t.shape[1] < 1 or t.shape[1] % images:
            raise _fail(shown, f"tensor '{key}' has shape {tuple(t.shape)}, expected {want}")
        if not bool(torch.isfinite(t).all()):
            raise _fail(shown, f"tensor '{key}' contains NaN or infinite values (a subject's features are finite; "
                               "the file is damaged or was written by another tool)")


def load_subject(path: str | os.PathLike, shown: str | None = None) -> tuple[SubjectFeatures, dict[str, str]]:
    """Read and check a subject file; the features come back on ComfyUI's intermediate device in the
    stored dtype (as Encode Subject leaves them). `shown` is how messages name the file (the node passes
    'models/ezigen_subjects/NAME', never a server path). Returns the subject and its metadata fields."""
    shown = shown or str(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            keys = list(f.keys())
            info = _read_metadata(shown, metadata, keys)
            wanted = feature_keys(len(info["widths"].split(",")))  # one feature per width the file declares
            missing = [k for k in wanted if k not in keys]
            if missing:
                listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                raise _fail(shown, f"{len(missing)} of the {len(wanted)} feature tensors are missing ({listed})")
            extra = sorted(set(keys) - set(wanted))
            if extra:
                raise _fail(shown, f"it holds {len(extra)} tensor(s) that are not subject features (e.g. "
                                   f"{shown_value(extra[0])}); expected exactly {wanted[0]} .. {wanted[-1]}")
            tensors = {key: f.get_tensor(key) for key in wanted}
    except SubjectFileError:
        raise
    except Exception as exc:  # safetensors raises its own error types for damaged headers and data
        raise _fail(shown, f"it is damaged or not a safetensors file ({exception_text(exc, path, shown)})") from exc
    widths = tuple(int(w) for w in info["widths"].split(","))
    images = int(info["image_count"])
    _check_features(shown, tensors, widths, images)
    device = comfy.model_management.intermediate_device()
    subject = SubjectFeatures(features=tuple(tensors[key].to(device) for key in tensors), image_count=images,
                              resolution=int(info["resolution"]), family=info["family"], adapter=info["adapter"])
    return subject, info


def require_subject_fits(subject: SubjectFeatures, encoder, shown: str) -> None:
    """Refuse a subject of another layout than `encoder` makes, naming the adapter it needs and what to do;
    the same layout under another adapter name is accepted with a warning (a renamed or retrained file)."""
    needed, given = subject_layout(subject), encoder_layout(encoder)
    wanted, used = cut(str(subject.adapter), 120), cut(str(encoder.name), 120)  # file names: bounded, but long
    if needed != given:
        raise SubjectFileError(
            f"The subject '{shown}' was encoded for the adapter '{wanted}' with an encoder of layout "
            f"{needed.describe()}, but the encoder given has layout {given.describe()} (adapter '{used}'). "
            f"Load the adapter '{wanted}' "
            f"in Load EZIGen Encoder with the {needed.family} checkpoint's MODEL as encoder_model, or encode the "
            "subject again with this encoder (Encode Subject) and save it anew.")
    if subject.adapter != encoder.name:
        log.warning("EZIGen: the subject %s was encoded for the adapter '%s' and is used with '%s' (same layout %s).",
                    shown, subject.adapter, encoder.name, given.describe())

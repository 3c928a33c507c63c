"""The EZIGen subject file: an encoded subject (the features of one Encode Subject run) on disk.

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
the adapter name is at most 1024 characters, the words 2000, all metadata 16 KiB; names the filesystem
or ComfyUI's file lists would refuse (over 255 bytes per name, hidden '.' parts) are refused before
writing, and so are names Windows would change or refuse (a subjects folder may be shared with a Windows
install: reserved device names such as CON or COM1, folder names ending in '.' or ' ', ':' and the like)
and text that is not valid Unicode (lone surrogates from a broken JSON escape); a save writes a temporary
`.partial` file and links it into place, so a killed save never leaves a damaged subject under a listed
name, and a save that fails (full disk, read-only folder, folder removed) removes it and says why.

The layout (family and widths) decides whether a subject fits an encoder: SD1.5 and SD2.1 have the same
widths but different features, so the family is part of it. The adapter name is a record, not a rule.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
SUFFIX = ".safetensors"
COUNTER_DIGITS = 5  # prefix_00001.safetensors, as ComfyUI's own save nodes count
MAX_LAYERS = 1024  # features a subject file may hold (SD1.x/SD2.x: 16, SDXL: 70)
METADATA_FIELDS = ("format", "format_version", "family", "widths", "adapter", "resolution", "image_count",
                   "subject_prompt")
WHERE_SUBJECTS_COME_FROM = ("Subject files are written by Save EZIGen Subject (Encode Subject -> Save EZIGen "
                            "Subject) into models/ezigen_subjects.")

PARTIAL_SUFFIX = ".partial"  # a save in progress: `<name>.<random>.partial`, renamed into place when complete
MAX_ADAPTER_NAME = 1024  # characters: the adapter file's name as Load EZIGen Encoder lists it
MAX_SUBJECT_PROMPT = 2000  # characters: the subject's words (CLIP reads 77 tokens)
MAX_METADATA = 16384  # characters of all metadata keys and values together
NAME_MAX = 255  # bytes per file or folder name (ext4, XFS, btrfs, APFS, NTFS)
PATH_MAX = 4096  # bytes of a whole path (Linux)

_FAMILY = FAMILY_NAME
_DECIMAL = re.compile(r"[0-9]{1,9}")
_UNSAFE_NAME = re.compile(r'[<>:"|?*\x00-\x1f]')  # not allowed in file names on Windows (or anywhere, for NUL)
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no character, no UTF-8 encoding
# Names Windows reserves for devices, with or without an extension (the part before the first '.', spaces dropped).
_WINDOWS_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])",
                               re.IGNORECASE)


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
    surrogate = _SURROGATE.search(subject_prompt or "")
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


def partial_name(name: str) -> str:
    """The temporary name a save writes first; it ends in PARTIAL_SUFFIX, which no file list shows."""
    return f"{name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"


def _write_new(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name in the same folder, then link it to `path`: a save that is killed
    half-way leaves only a `.partial` file (never listed), never a damaged subject under the final name;
    the link fails rather than replace a file a concurrent writer made (FileExistsError)."""
    temp = path.with_name(partial_name(path.name))
    try:
        with open(temp, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links (FAT, some shares): check, then rename
            if path.exists():
                raise FileExistsError(f"{path.name} exists") from None
            os.replace(temp, path)
    finally:
        try:
            temp.unlink(missing_ok=True)
        except OSError:  # e.g. the folder went read-only: the error that stopped the save is the one to report
            log.warning("EZIGen: could not remove the temporary file %s", temp.name)


def save_subject(path: str | os.PathLike, subject: SubjectFeatures, subject_prompt: str = "") -> None:
    """Write a new subject file; an existing file is never replaced (FileExistsError)."""
    _write_new(Path(path), subject_file_bytes(subject, subject_prompt))


def prefix_parts(prefix: str, folder_shown: str) -> list[str]:
    """`filename_prefix` as path parts inside the subjects folder: subfolders are fine, leaving the
    folder (absolute paths, Windows drives and shares, '..') is refused, and so is any name that would not
    come back as saved on every system ComfyUI runs on (see the module docstring)."""
    surrogate = _SURROGATE.search(prefix)
    if surrogate is not None:  # checked first: such text cannot even be written to the log
        raise SubjectFileError(
            f"filename_prefix {shown_value(prefix)} holds a lone surrogate (U+{ord(surrogate.group()):04X} at character "
            f"{surrogate.start() + 1}), which is not a character and cannot be part of a file name (a script sent a "
            "broken \\u escape): send the name as plain Unicode text, e.g. 'dogs/rex'.")
    text = prefix.strip()
    prefix = shown_value(prefix)  # as messages repeat it: quoted, cut short, control characters escaped
    if not text:
        raise SubjectFileError(f"filename_prefix is empty: give a name such as 'subject' or 'dogs/rex' (saved "
                               f"under {folder_shown}).")
    if os.path.isabs(text) or text[0] in "/\\" or re.match(r"[A-Za-z]:[\\/]", text):
        raise SubjectFileError(f"filename_prefix {prefix} is an absolute path: subjects are saved under "
                               f"{folder_shown}; give a name relative to it, e.g. 'subject' or 'dogs/rex'.")
    parts = re.split(r"[\\/]+", text)
    if ".." in parts:
        raise SubjectFileError(f"filename_prefix {prefix} uses '..', which would leave {folder_shown}; give a "
                               "name inside it, e.g. 'subject' or 'dogs/rex'.")
    if parts[-1] in ("", "."):
        raise SubjectFileError(f"filename_prefix {prefix} does not end with a file name: add one, e.g. 'dogs/rex' "
                               f"saves {folder_shown}/dogs/rex_00001.safetensors.")
    hidden = next((p for p in parts if p.startswith(".") and p != "."), None)
    if hidden is not None:
        raise SubjectFileError(f"filename_prefix {prefix} has a part that starts with '.' ({shown_value(hidden)}): "
                               "hidden names are left out of ComfyUI's file lists (e.g. '.git'), so Load EZIGen "
                               "Subject could not list the file; drop the leading '.', e.g. 'dogs/rex'.")
    bad = sorted(set(_UNSAFE_NAME.findall(text)))
    if bad:
        drive = " (Windows reads 'a:' as a drive)" if ":" in bad else ""
        raise SubjectFileError(f"filename_prefix {prefix} contains {', '.join(repr(c) for c in bad)}, which "
                               f"file names cannot hold on every system{drive}: use letters, digits, '-', '_' and "
                               "'/'.")
    parts = [p for p in parts if p not in ("", ".")]
    require_portable_names(prefix, [*parts[:-1], f"{parts[-1]}_{1:0{COUNTER_DIGITS}d}{SUFFIX}"])
    return parts


def require_portable_names(prefix: str, names: list[str]) -> None:
    """Refuse folder and file names that Windows changes or refuses, naming the part: a subjects folder shared
    with a Windows install (or copied to one) would hold files whose names do not come back as saved."""
    for name in names:
        if name.endswith((".", " ")):
            raise SubjectFileError(
                f"filename_prefix {prefix} has the folder name {shown_value(name)}, which ends with "
                f"{'a dot' if name.endswith('.') else 'a space'}: Windows drops it, so the folder would not come back "
                "under this name; remove it, e.g. 'dogs/rex'.")
        device = name.split(".", 1)[0].rstrip(" ")
        if _WINDOWS_RESERVED.fullmatch(device):
            raise SubjectFileError(
                f"filename_prefix {prefix} has the name {shown_value(name)}: Windows reserves '{device}' for a "
                f"device, so a subjects folder shared with Windows could not hold it; rename that part, e.g. "
                f"'{device}_1'.")


def next_subject_path(folder: str | os.PathLike, prefix: str, folder_shown: str,
                      taken: Callable[[str], bool] = lambda name: False) -> tuple[Path, str]:
    """The next free `<prefix>_NNNNN.safetensors` in `folder`, counting on from the highest number
    there (a deleted file's number is not reused); `taken(name)` also rules out names used in the
    folder's other locations (extra_model_paths.yaml), which the dropdown would show instead.
    Returns the path and the name as the dropdown lists it."""
    parts = prefix_parts(prefix, folder_shown)
    root = Path(os.path.abspath(folder))
    directory = root.joinpath(*parts[:-1])
    if os.path.commonpath([root, os.path.abspath(directory)]) != str(root):
        raise SubjectFileError(f"filename_prefix '{prefix}' would leave {folder_shown}.")
    base = parts[-1]
    require_short_enough(prefix, parts[:-1], directory / f"{base}_{1:0{COUNTER_DIGITS}d}{SUFFIX}", folder_shown)
    pattern = re.compile(re.escape(base) + r"_(\d{%d,})%s$" % (COUNTER_DIGITS, re.escape(SUFFIX)))
    numbers = [int(m.group(1)) for m in map(pattern.match, os.listdir(directory) if directory.is_dir() else ())
               if m]
    counter = max(numbers, default=0) + 1
    while True:
        path = directory / f"{base}_{counter:0{COUNTER_DIGITS}d}{SUFFIX}"
        require_short_enough(prefix, parts[:-1], path, folder_shown)
        name = os.path.relpath(path, root)  # ComfyUI's file lists use the OS separator too
        if not taken(name):  # a file of the same number here was counted above
            return path, name
        counter += 1


def require_short_enough(prefix: str, folders: list[str], path: Path, folder_shown: str) -> None:
    """Refuse, before anything is written, a name the filesystem would refuse: each folder and the
    file's temporary name within NAME_MAX bytes, the whole path within PATH_MAX bytes."""
    names = [*folders, partial_name(path.name)]
    longest = max(names, key=lambda n: len(os.fsencode(n)))
    if len(os.fsencode(longest)) > NAME_MAX:
        spare = len(os.fsencode(partial_name(path.name))) - len(os.fsencode(path.stem.rsplit("_", 1)[0]))
        raise SubjectFileError(
            f"filename_prefix {shown_value(prefix)} is too long: the name {shown_value(longest)} would be "
            f"{len(os.fsencode(longest))} bytes, over the filesystem's limit of {NAME_MAX} bytes per file or folder "
            f"name (a file name's part of the prefix may be {NAME_MAX - spare} bytes, as the counter and the "
            "temporary name of a save are added): give a shorter name.")
    if len(os.fsencode(os.path.abspath(path))) + len(PARTIAL_SUFFIX) + 9 > PATH_MAX:
        raise SubjectFileError(f"filename_prefix {shown_value(prefix)} is too long: the path in {folder_shown} would "
                               f"exceed the filesystem's limit of {PATH_MAX} bytes for a whole path: use fewer or "
                               "shorter subfolders.")


# Why a write failed, in words, and what to do (never the exception's text: it holds the server's path).
_ADVICE = {
    errno.ENOSPC: ("the disk is full", "free some space on the disk, then queue the prompt again"),
    errno.EACCES: ("ComfyUI may not write there (a read-only folder?)",
                   "make the folder writable for the user ComfyUI runs as, then queue the prompt again"),
    errno.EPERM: ("ComfyUI may not write there (a read-only or locked folder?)",
                  "make the folder writable for the user ComfyUI runs as, then queue the prompt again"),
    errno.EROFS: ("the filesystem is mounted read-only", "save to a writable disk, then queue the prompt again"),
    errno.ENOENT: ("the folder was removed or renamed during the save",
                   "queue the prompt again (the folder is made anew)"),
    errno.ENOTDIR: ("a file is in the way of a folder of that name",
                    "rename that file or choose another filename_prefix"),
    errno.EEXIST: ("a file is in the way of a folder of that name",
                   "rename that file or choose another filename_prefix"),
    errno.EFBIG: ("the file is larger than the filesystem or ComfyUI's process allows",
                  "save to another disk, then queue the prompt again"),
    errno.EIO: ("the disk reported an input/output error", "check the disk, then queue the prompt again"),
}
if hasattr(errno, "EDQUOT"):
    _ADVICE[errno.EDQUOT] = ("the disk quota is used up", "free some space, then queue the prompt again")


def write_error(exc: OSError, what: str) -> SubjectFileError:
    """`exc` (a failed mkdir, listing or write) as the pack's error: `what` (the file or folder as the user knows
    it, 'models/ezigen_subjects/...'), the reason in words and the errno's name, and what to do."""
    reason, advice = _ADVICE.get(exc.errno, (None, "check the folder, then queue the prompt again"))
    code = errno.errorcode.get(exc.errno or 0)
    if reason is None:
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return SubjectFileError(f"Save EZIGen Subject could not write {what}: {reason}"
                            f"{f' ({code})' if code else ''}. Nothing was saved: {advice}.")


def save_new_subject(folder: str | os.PathLike, prefix: str, subject: SubjectFeatures, subject_prompt: str,
                     folder_shown: str, taken: Callable[[str], bool] = lambda name: False) -> str:
    """Save under the next free name (see `next_subject_path`); returns the name as the dropdown lists it.
    Any filesystem error is reported with the file as the user knows it and the reason; a failed write leaves
    no temporary file."""
    data = subject_file_bytes(subject, subject_prompt)  # an unsaveable subject is refused before any folder is made
    root = os.path.abspath(folder)
    while True:
        try:
            path, name = next_subject_path(folder, prefix, folder_shown, taken)
        except OSError as exc:  # the subfolder could not be listed
            raise write_error(exc, f"into {folder_shown} (filename_prefix {shown_value(prefix)})") from exc
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = os.path.relpath(path.parent, root).replace(os.sep, "/")
            raise write_error(exc, f"the folder '{folder_shown}/{cut(where)}' (filename_prefix "
                                   f"{shown_value(prefix)})") from exc
        try:
            _write_new(path, data)
        except FileExistsError:
            continue  # written by someone else in between: take the next number
        except OSError as exc:
            raise write_error(exc, f"'{folder_shown}/{cut(name.replace(os.sep, '/'), 300)}'") from exc
        given = prefix.replace("\\", "/")
        used = "/".join(name.replace(os.sep, "/").split("/")[:-1] + [path.stem.rsplit("_", 1)[0]])
        if given != used:
            log.warning("EZIGen: filename_prefix %s was saved as '%s' (spaces around it and empty or '.' parts "
                        "dropped).", shown_value(prefix), name.replace(os.sep, "/"))
        return name


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

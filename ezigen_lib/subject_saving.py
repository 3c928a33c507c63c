"""Saving a subject file (its format: subject_format.py): the save-name policy and the atomic write.

Names: `filename_prefix` becomes `<prefix>_NNNNN.safetensors` inside the subjects folder, counting on from the
highest number there, never replacing a file. Names the filesystem or ComfyUI's file lists would refuse (over 255
bytes per name, hidden '.' parts) are refused before writing, and so are names Windows would change or refuse (a
subjects folder may be shared with a Windows install: reserved device names such as CON or COM1, folder names
ending in '.' or ' ', ':' and the like) and text that is not valid Unicode (lone surrogates from a broken JSON
escape).

The write: a save writes a temporary `.partial` file and links it into place, so a killed save never leaves a
damaged subject under a listed name, and a save that fails (full disk, read-only folder, folder removed) removes
it and says why. ComfyUI lists a models folder again when one of its folders' mtimes changes; where a filesystem
with coarse mtimes (FAT's 2 s, some network shares) leaves the folder's mtime as it was, the save moves it on by
one such tick, so Load EZIGen Subject lists the new file at once.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Callable

from .capture import SubjectFeatures
from .errors import cut, shown as shown_value
from .subject_format import LONE_SURROGATE, SubjectFileError, subject_file_bytes

log = logging.getLogger("EZIGen")

SUFFIX = ".safetensors"
COUNTER_DIGITS = 5  # prefix_00001.safetensors, as ComfyUI's own save nodes count
PARTIAL_SUFFIX = ".partial"  # a save in progress: `<name>.<random>.partial`, renamed into place when complete
NAME_MAX = 255  # bytes per file or folder name (ext4, XFS, btrfs, APFS, NTFS)
PATH_MAX = 4096  # bytes of a whole path (Linux)

_UNSAFE_NAME = re.compile(r'[<>:"|?*\x00-\x1f]')  # not allowed in file names on Windows (or anywhere, for NUL)
# Names Windows reserves for devices, with or without an extension (the part before the first '.', spaces dropped).
_WINDOWS_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])",
                               re.IGNORECASE)



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


# The coarsest mtime step of a common filesystem (FAT): a folder's mtime moved on by it differs from any listing's.
COARSE_MTIME_TICK_NS = 2_000_000_000


def _folder_gaining_an_entry(path: Path, root: Path) -> Path | None:
    """The folder whose entries a save of `path` changes: its folder, or the deepest one that exists above it
    inside `root` (a new subfolder is made there); None when `root` itself is new (ComfyUI sees a new root)."""
    folder = path.parent
    while not folder.is_dir():
        if folder == root:
            return None
        folder = folder.parent
    return folder


def _mtime_ns(folder: Path | None) -> int | None:
    try:
        return None if folder is None else folder.stat().st_mtime_ns
    except OSError:
        return None


def _show_the_change(folder: Path | None, mtime_before_ns: int | None) -> None:
    """Move `folder`'s mtime on where adding an entry left it as it was (see the module docstring)."""
    if folder is None or mtime_before_ns is None:
        return
    try:
        now = folder.stat()
        if now.st_mtime_ns == mtime_before_ns:
            os.utime(folder, ns=(now.st_atime_ns, mtime_before_ns + COARSE_MTIME_TICK_NS))
    except OSError as exc:  # the file is saved; only the dropdown may lag until ComfyUI lists the folder again
        log.warning("EZIGen: could not update the subjects folder's time (%s)", exc.strerror or exc)


def save_subject(path: str | os.PathLike, subject: SubjectFeatures, subject_prompt: str = "") -> None:
    """Write a new subject file; an existing file is never replaced (FileExistsError)."""
    _write_new(Path(path), subject_file_bytes(subject, subject_prompt))


def prefix_parts(prefix: str, folder_shown: str) -> list[str]:
    """`filename_prefix` as path parts inside the subjects folder: subfolders are fine, leaving the
    folder (absolute paths, Windows drives and shares, '..') is refused, and so is any name that would not
    come back as saved on every system ComfyUI runs on (see the module docstring)."""
    surrogate = LONE_SURROGATE.search(prefix)
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
        changed = _folder_gaining_an_entry(path, Path(root))
        mtime_before = _mtime_ns(changed)
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
        _show_the_change(changed, mtime_before)
        given = prefix.replace("\\", "/")
        used = "/".join(name.replace(os.sep, "/").split("/")[:-1] + [path.stem.rsplit("_", 1)[0]])
        if given != used:
            log.warning("EZIGen: filename_prefix %s was saved as '%s' (spaces around it and empty or '.' parts "
                        "dropped).", shown_value(prefix), name.replace(os.sep, "/"))
        return name

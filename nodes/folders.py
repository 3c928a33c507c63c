"""The pack's model folders (models/ezigen, models/ezigen_subjects), registered so that paths from
extra_model_paths.yaml survive."""
from __future__ import annotations

import os

import folder_paths

from ..ezigen_lib.checkpoint import file_fingerprint
from ..ezigen_lib.errors import cut

EZIGEN_FOLDER = "ezigen"
SUBJECTS_FOLDER = "ezigen_subjects"
SUBJECT_EXTENSIONS = {".safetensors"}  # Save EZIGen Subject writes only safetensors; nothing else is read


def _register(folder: str, extensions: set[str]) -> None:
    # extra_model_paths.yaml is read before custom nodes load and may already have created this entry
    # (with an empty extension set): keep its paths, add the default folder, set the extensions.
    default = os.path.join(folder_paths.models_dir, folder)
    paths: list[str] = []
    if folder in folder_paths.folder_names_and_paths:
        paths = list(folder_paths.folder_names_and_paths[folder][0])
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[folder] = (paths, set(extensions))


def register_model_folder() -> None:
    _register(EZIGEN_FOLDER, set(folder_paths.supported_pt_extensions))
    _register(SUBJECTS_FOLDER, SUBJECT_EXTENSIONS)


def subjects_save_folder() -> str:
    """Where Save EZIGen Subject writes: the default models/ezigen_subjects (not a folder from
    extra_model_paths.yaml, which may be shared or read-only), so the README's path is where files land."""
    return os.path.join(folder_paths.models_dir, SUBJECTS_FOLDER)


EXPECTED_FILES = {
    EZIGEN_FOLDER: ("the EZIGen adapter: the official checkpoint folder (checkpoint-200000 from the EZIGen release, "
                    "linked from github.com/ZichengDuan/EZIGen) or its model.safetensors, or a small adapter file made "
                    "with `python -m ezigen_lib.convert CHECKPOINT_DIR ezigen_sd21base.safetensors`"),
    SUBJECTS_FOLDER: ("a subject file written by Save EZIGen Subject (a .safetensors with the 16 subject features; "
                      "queue a workflow with Encode Subject -> Save EZIGen Subject to make one)"),
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
    return (f"'{cut(name)}' is not in models/{folder} ({found}). Put {EXPECTED_FILES[folder]} there, then "
            "refresh the page (R) and pick it.")


def model_file_fingerprint(folder: str, name: str) -> tuple:
    """Path, size and mtime of a listed model file (the name alone when it is missing), so a file
    replaced under the same name is loaded again."""
    path = folder_paths.get_full_path(folder, name)
    return file_fingerprint(path) if path else (name,)

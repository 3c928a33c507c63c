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

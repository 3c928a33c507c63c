"""Save EZIGen Subject / Load EZIGen Subject: encoded subjects kept in models/ezigen_subjects."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..ezigen_lib.subject_format import load_subject, require_subject_fits
from ..ezigen_lib.subject_saving import save_new_subject
from .folders import SUBJECTS_FOLDER, check_model_file, model_file_fingerprint, subjects_save_folder
from .types import EZIGenEncoderType, EZIGenSubjectType

SHOWN_FOLDER = f"models/{SUBJECTS_FOLDER}"


def _name_taken(name: str) -> bool:
    """A name in any location of the folder (extra_model_paths.yaml too): the dropdown would show one
    file for both, so a new subject must not take it."""
    return any(os.path.exists(os.path.join(p, name)) for p in folder_paths.get_folder_paths(SUBJECTS_FOLDER))


class EZIGenSaveSubject(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenSaveSubject",
            display_name="Save EZIGen Subject",
            category="EZIGen",
            description="Saves an encoded subject (its 16 features, the adapter and encoder layout it was made for, "
                        "and its words) to models/ezigen_subjects, so later workflows load it with Load EZIGen "
                        "Subject instead of encoding the images again. Never overwrites: each save takes the next "
                        "number.",
            inputs=[
                EZIGenSubjectType.Input("subject", tooltip="From Encode Subject (EZIGen)."),
                io.String.Input("filename_prefix", default="subject",
                                tooltip="File name in models/ezigen_subjects; _00001, _00002, ... is added. Subfolders "
                                        "work (e.g. 'dogs/rex'); absolute paths, '..', parts starting with '.', "
                                        "names over 220 bytes and names Windows changes or refuses (CON, NUL, COM1, "
                                        "folder names ending in '.' or ' ', ':' and other reserved characters) are "
                                        "refused."),
                io.String.Input("subject_prompt", default="", multiline=False, optional=True,
                                tooltip="The subject's words, e.g. 'a dog' (the text of the subject prompt), kept in "
                                        "the file; Load EZIGen Subject gives it back."),
            ],
            outputs=[io.String.Output(display_name="subject_name",
                                      tooltip="The saved file's name, as Load EZIGen Subject lists it.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, subject, filename_prefix: str, subject_prompt: str = "") -> io.NodeOutput:
        name = save_new_subject(subjects_save_folder(), filename_prefix, subject, subject_prompt or "",
                                SHOWN_FOLDER, taken=_name_taken)
        return io.NodeOutput(name, ui=ui.PreviewText(name))


class EZIGenLoadSubject(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenLoadSubject",
            display_name="Load EZIGen Subject",
            category="EZIGen",
            description="Loads a subject saved by Save EZIGen Subject from models/ezigen_subjects. It gives the very "
                        "features Encode Subject made (same results, bit for bit) and refuses a subject encoded for "
                        "another encoder layout.",
            inputs=[
                EZIGenEncoderType.Input("encoder",
                                        tooltip="From Load EZIGen Encoder: the subject must have been encoded with the "
                                                "same layout (model family and widths)."),
                io.Combo.Input("subject_name", options=folder_paths.get_filename_list(SUBJECTS_FOLDER),
                               tooltip="A subject in models/ezigen_subjects, written by Save EZIGen Subject."),
            ],
            outputs=[
                EZIGenSubjectType.Output(display_name="subject",
                                         tooltip="Subject features for Patch UNet Attention, as from Encode Subject."),
                io.String.Output(display_name="subject_prompt",
                                 tooltip="The subject's words saved with it (empty if none were given)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, subject_name: str) -> bool | str:
        return check_model_file(SUBJECTS_FOLDER, subject_name)

    @classmethod
    def fingerprint_inputs(cls, subject_name: str, **_) -> tuple:
        return model_file_fingerprint(SUBJECTS_FOLDER, subject_name)

    @classmethod
    def execute(cls, encoder, subject_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(SUBJECTS_FOLDER, subject_name)
        shown = f"{SHOWN_FOLDER}/{subject_name}"
        subject, metadata = load_subject(path, shown)
        require_subject_fits(subject, encoder, shown)
        return io.NodeOutput(subject, metadata["subject_prompt"])

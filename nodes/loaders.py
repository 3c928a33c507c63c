from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..ezigen_lib.encoder import load_encoder
from ..ezigen_lib.family import RESIDUALS
from ..ezigen_lib.similarity import load_clip_vision
from .common import require_valid_widgets
from .folders import EZIGEN_FOLDER, check_model_file, model_file_fingerprint
from .types import EZIGenEncoderType

RESIDUAL_CHOICES = ("from file", *RESIDUALS)


def residual_override(choice: str) -> str | None:
    """The residual widget's choice as load_encoder takes it (None: the file's)."""
    return None if choice == RESIDUAL_CHOICES[0] else choice


class EZIGenLoadEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenLoadEncoder",
            display_name="Load EZIGen Encoder",
            category="EZIGen",
            description="Loads the EZIGen adapters from models/ezigen and pairs them with the frozen UNet that "
                        "encodes subjects (normally the SD2.1-base checkpoint's MODEL, unpatched; for an SDXL adapter "
                        "the SDXL base MODEL). An adapter made for another model family is refused by name.",
            inputs=[
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(EZIGEN_FOLDER),
                               tooltip="Adapter weights in models/ezigen: the official checkpoint's "
                                       "model.safetensors (or its folder's file) or a converted adapter file."),
                io.Model.Input("encoder_model",
                               tooltip="The frozen UNet that encodes subjects: the SD2.1-base MODEL for the "
                                       "official weights, the SDXL base MODEL for an SDXL adapter. It is cloned, "
                                       "never modified."),
                io.Combo.Input("residual", options=list(RESIDUAL_CHOICES), default=RESIDUAL_CHOICES[0],
                               optional=True,
                               tooltip="How each adapter's output joins its block (upstream's "
                                       "residual_connection, which the weights cannot show). 'from file': what "
                                       "the file records, else its family's (SD2.1: double, SDXL: single). "
                                       "'double' = h1 + LN(h1) + O (residual_connection: true; SD2.1's release, "
                                       "upstream's early SDXL config); 'single' = h1 + O (false; upstream's SDXL "
                                       "run)."),
            ],
            outputs=[EZIGenEncoderType.Output(display_name="encoder",
                                              tooltip="Adapters plus subject encoder, for Encode Subject and "
                                                      "Patch UNet Attention.")],
        )

    @classmethod
    def validate_inputs(cls, adapter_name: str) -> bool | str:
        return check_model_file(EZIGEN_FOLDER, adapter_name)

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str, **_) -> tuple:
        return model_file_fingerprint(EZIGEN_FOLDER, adapter_name)

    @classmethod
    def execute(cls, adapter_name: str, encoder_model, residual: str = RESIDUAL_CHOICES[0]) -> io.NodeOutput:
        require_valid_widgets(cls, adapter_name=adapter_name, residual=residual)
        path = folder_paths.get_full_path_or_raise(EZIGEN_FOLDER, adapter_name)
        return io.NodeOutput(load_encoder(path, encoder_model, f"models/{EZIGEN_FOLDER}/{adapter_name}",
                                          name=adapter_name, residual=residual_override(residual)))


class EZIGenLoadCLIPVision(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenLoadCLIPVision",
            display_name="Load CLIP Vision for Autostop (EZIGen)",
            category="EZIGen",
            description="Loads an image encoder from models/clip_vision for the EZIGen Sampler's autostop. Unlike the "
                        "core loader it also reads OpenAI CLIP ViT-B/32, the model the reference's 0.99 threshold "
                        "was tuned on; other CLIP vision models (e.g. ViT-H) work with a threshold of their own.",
            inputs=[io.Combo.Input("clip_name", options=folder_paths.get_filename_list("clip_vision"),
                                   tooltip="A file in models/clip_vision (ViT-B/32 as safetensors, or ViT-H/L/G).")],
            outputs=[io.ClipVision.Output(tooltip="For the EZIGen Sampler's clip_vision input.")],
        )

    @classmethod
    def validate_inputs(cls, clip_name: str) -> bool | str:
        return check_model_file("clip_vision", clip_name)

    @classmethod
    def fingerprint_inputs(cls, clip_name: str, **_) -> tuple:
        return model_file_fingerprint("clip_vision", clip_name)

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("clip_vision", clip_name)
        return io.NodeOutput(load_clip_vision(path, f"models/clip_vision/{clip_name}"))

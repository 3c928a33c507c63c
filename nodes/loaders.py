from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..ezigen_lib.encoder import load_encoder
from .folders import EZIGEN_FOLDER
from .types import EZIGenEncoderType


class EZIGenLoadEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenLoadEncoder",
            display_name="Load EZIGen Encoder",
            category="EZIGen",
            description="Loads the EZIGen adapters from models/ezigen and pairs them with the frozen UNet that "
                        "encodes subjects (normally the SD2.1-base checkpoint's MODEL, unpatched).",
            inputs=[
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(EZIGEN_FOLDER),
                               tooltip="Adapter weights in models/ezigen: the official checkpoint's "
                                       "model.safetensors (or its folder's file) or a converted adapter file."),
                io.Model.Input("encoder_model",
                               tooltip="The frozen UNet that encodes subjects: the SD2.1-base MODEL for the "
                                       "official weights. It is cloned, never modified."),
            ],
            outputs=[EZIGenEncoderType.Output(display_name="encoder",
                                              tooltip="Adapters plus subject encoder, for Encode Subject and "
                                                      "Patch UNet Attention.")],
        )

    @classmethod
    def execute(cls, adapter_name: str, encoder_model) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(EZIGEN_FOLDER, adapter_name)
        return io.NodeOutput(load_encoder(path, encoder_model))

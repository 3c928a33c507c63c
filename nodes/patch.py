from __future__ import annotations

from comfy_api.latest import io

from ..ezigen_lib.inject import apply_subject
from .common import require_valid_widgets
from .types import EZIGenEncoderType, EZIGenSubjectType


class EZIGenPatchUNetAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenPatchUNetAttention",
            display_name="Patch UNet Attention (EZIGen)",
            category="EZIGen",
            description="Returns a copy of the MODEL whose 16 transformer blocks attend to the subject after "
                        "self-attention. Use it with any KSampler: EZIGen's default is the adapter off for the first "
                        "60% of sampling (text sets the layout) and on for the rest (appearance). With a mask the "
                        "subject acts only in that region.",
            inputs=[
                io.Model.Input("model", tooltip="SD1.x, SD2.x or SDXL model to patch, of the adapter's family (the "
                                                "official adapter was trained on SD2.1-base)."),
                EZIGenEncoderType.Input("encoder", tooltip="From Load EZIGen Encoder."),
                EZIGenSubjectType.Input("subject", tooltip="From Encode Subject."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Scales the adapter's contribution: 1 = as trained, 0 = no effect."),
                io.Float.Input("start_percent", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which the subject starts to be injected "
                                       "(0.6 = EZIGen's split ratio 0.4)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which injection stops."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where this subject may act (1 = here, 0 = not at all; any size, stretched to "
                                      "the image, and kept on it when a conditioning has an area). Chain two Patch "
                                      "nodes with two masks to place two subjects."),
            ],
            outputs=[io.Model.Output(tooltip="The patched copy of the model.")],
        )

    @classmethod
    def execute(cls, model, encoder, subject, strength: float, start_percent: float,
                end_percent: float, mask=None) -> io.NodeOutput:
        require_valid_widgets(cls, strength=strength, start_percent=start_percent, end_percent=end_percent)
        return io.NodeOutput(apply_subject(model, encoder, subject, strength, start_percent, end_percent, mask))

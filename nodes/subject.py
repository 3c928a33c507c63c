from __future__ import annotations

from comfy_api.latest import io

from ..ezigen_lib.capture import encode_subject, subject_context, subject_pooled
from .common import require_valid_widgets
from .types import EZIGenEncoderType, EZIGenSubjectType


class EZIGenEncodeSubject(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenEncodeSubject",
            display_name="Encode Subject (EZIGen)",
            category="EZIGen",
            description="Encodes subject images with one pass of the frozen encoder UNet at timestep 1 and keeps "
                        "the input of each of its 16 self-attentions. Several images in the batch are combined "
                        "into one subject.",
            inputs=[
                EZIGenEncoderType.Input("encoder", tooltip="From Load EZIGen Encoder."),
                io.Vae.Input("vae", tooltip="The VAE of the encoder's checkpoint (SD2.1-base for the official weights)."),
                io.Conditioning.Input("subject_prompt",
                                      tooltip="The subject's class in words (e.g. 'a dog'), encoded with the "
                                              "encoder checkpoint's CLIP."),
                io.Image.Input("image", tooltip="Subject image(s); a plain or white background works best."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the VAE posterior sample and of the small noise added at timestep 1 "
                                     "(both as the reference)."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64,
                             tooltip="Square size the subject is resized to before encoding (512 as trained)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional subject mask (1 = subject): everything else is painted white."),
            ],
            outputs=[EZIGenSubjectType.Output(display_name="subject",
                                              tooltip="Subject features for Patch UNet Attention.")],
        )

    @classmethod
    def execute(cls, encoder, vae, subject_prompt, image, seed: int, resolution: int, mask=None) -> io.NodeOutput:
        require_valid_widgets(cls, seed=seed, resolution=resolution)
        context = subject_context(subject_prompt)
        return io.NodeOutput(encode_subject(encoder.model, vae, context, image, mask, seed, resolution,
                                            encoder.info.widths, adapter=encoder.name,
                                            pooled=subject_pooled(subject_prompt)))

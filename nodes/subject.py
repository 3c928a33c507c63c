from __future__ import annotations

from comfy_api.latest import io

from ..ezigen_lib.capture import encode_subject, subject_context, subject_pooled
from ..ezigen_lib.text_encoding import LAYERS, encode_prompts
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
                        "the input of each of its self-attentions (16 on SD1.x/SD2.x, 70 on SDXL). Several images "
                        "in the batch are combined into one subject.",
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
                             tooltip="Square size the subject is resized to before encoding: 512 for SD1.x/SD2.x "
                                     "(as the release was trained); SDXL's native size is 1024 (upstream's SDXL "
                                     "run), which costs about 4x the memory of 512."),
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


class EZIGenSubjectPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenSubjectPrompt",
            display_name="EZIGen Subject Prompt",
            category="EZIGen",
            description="Encodes the subject's class (e.g. 'a dog') for Encode Subject, either as CLIPTextEncode "
                        "does or as upstream's SDXL encoder pass did (final layers after LayerNorm).",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the encoder's checkpoint."),
                io.String.Input("text", multiline=True, default="a photo of a dog",
                                tooltip="The subject's class in words."),
                io.Combo.Input("layers", options=list(LAYERS), default=LAYERS[0],
                               tooltip="'comfy': as CLIPTextEncode (SDXL: both towers' penultimate layers, no final "
                                       "LayerNorm; SD2.x: the penultimate layer after LayerNorm, which is what the "
                                       "SD2.1 release used; SD1.x: the last layer). 'final': every tower's final "
                                       "layer after its final LayerNorm, first 77 tokens: upstream's SDXL subject "
                                       "pass and trainer (faithful for SDXL adapters; for SD2.x it is NOT what the "
                                       "release used; for SD1.x the same as 'comfy')."),
            ],
            outputs=[io.Conditioning.Output(display_name="subject_prompt",
                                            tooltip="For Encode Subject's subject_prompt (carries the pooled "
                                                    "output SDXL's subject pass needs).")],
        )

    @classmethod
    def execute(cls, clip, text: str, layers: str) -> io.NodeOutput:
        require_valid_widgets(cls, layers=layers)
        context, pooled = encode_prompts(clip, [text], layers)
        return io.NodeOutput([[context, {} if pooled is None else {"pooled_output": pooled}]])

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..ezigen_lib.autostop import LoopPolicy
from ..ezigen_lib.chart import similarity_chart
from ..ezigen_lib.crop import CROP_MODES, DEFAULT_CONTEXT
from ..ezigen_lib.edit import OUTPUT_SIZES, EditSettings, run_edit
from ..ezigen_lib.edit_source import edit_source
from ..ezigen_lib.inversion import SOLVERS
from ..ezigen_lib.inversion_text import exceptional_text
from ..ezigen_lib.family import require_conditioning_width, require_text_width
from .common import autostop_inputs, require_valid_widgets, similarity_chart_output


class EZIGenEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenEdit",
            display_name="EZIGen Edit",
            category="EZIGen",
            description="Puts the subject into the masked region of any image (a photo, a FLUX output...) and keeps "
                        "the rest: inverts the image with the unpatched model, regenerates the last split_ratio of "
                        "the steps with the subject while restoring the background after every step, and repeats "
                        "until two rounds look alike.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Patch UNet Attention (SD2.1-base for the official "
                                                "weights, or SDXL with an SDXL adapter); inversion uses it with the "
                                                "patch switched off."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: encodes the reference's inversion prompt "
                                              "(token 7788 everywhere, no positions; SDXL: through both of its "
                                              "text encoders, with the pooled embedding SDXL needs)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE."),
                io.Image.Input("image", tooltip="The source image (one image; alpha is ignored). Any size."),
                io.Mask.Input("mask", tooltip="Where to put the subject (1 = regenerate), same size as the image: a "
                                              "painted mask, LoadImage's alpha mask, or a segmentation. Values below "
                                              "0.5/255 (what an 8-bit mask stores as 0, e.g. a segmentation's faint "
                                              "haze) count as unpainted for the crop box."),
                io.Conditioning.Input("positive", tooltip="What the edited region shows, e.g. 'a dog on the sofa'."),
                io.Conditioning.Input("negative", tooltip="The reference uses an empty prompt here."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the sampler noise; every round and step derives its own from it."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Steps of the full schedule (N)."),
                io.Float.Input("cfg", default=2.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance while editing (the reference uses 2)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSAMPLER_NAMES, default="ddpm",
                               tooltip="Stepped one interval at a time (multistep samplers act first order)."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform",
                               tooltip="ddim_uniform gives the reference's timesteps (981, 961, ..., 1 for 50 steps; "
                                       "in faithful mode exactly the reference's for every step count)."),
                io.Float.Input("split_ratio", default=0.4, min=0.05, max=1.0, step=0.05,
                               tooltip="How deep to invert: the last split_ratio of the steps are regenerated. "
                                       "Larger = more change in the masked region."),
                *autostop_inputs("rounds", fewest=1),
                io.Combo.Input("mode", options=list(EditSettings.MODES), default="faithful",
                               tooltip="faithful: the reference's maths (its timesteps for every step count with "
                                       "ddim_uniform, inversion steps t = 0, 20, ..., 400 handed to the editing start, "
                                       "one-step-late background, "
                                       "sampled VAE round trips), with this node's mask, size and compositing "
                                       "options. reference: all of that plus the reference's own pre- and "
                                       "post-processing, so the output is what the reference returns (hard mask, "
                                       "short side 512, the decoded work image, no compositing; mask_mode, "
                                       "short_side and output_size are not used). clean: invert along the exact "
                                       "levels the editing steps visit and restore the background at the level "
                                       "just reached."),
                io.Combo.Input("inversion", options=list(SOLVERS), default="dpmpp_2m",
                               tooltip="dpmpp_2m: the reference's DPM-Solver++ inverse. euler: DDIM inversion."),
                io.Combo.Input("mask_mode", options=list(EditSettings.MASK_MODES), default="soft",
                               tooltip="soft: use the mask as painted. hard: only fully painted pixels count "
                                       "(the reference's == 255 threshold)."),
                io.Int.Input("short_side", default=512, min=64, max=2048, step=8,
                             tooltip="Work resolution of the short side (512 as SD2.1 was trained; for an SDXL "
                                     "checkpoint set 1024, its native size: at 512 or less it renders poorly and "
                                     "the log says so). A source or crop box is "
                                     "scaled up at most 16x (at least short_side / 16 px on its short side) and "
                                     "edited at most 16:1; the box takes more surroundings where the source has "
                                     "room."),
                io.Combo.Input("output_size", options=list(OUTPUT_SIZES), default="source",
                               tooltip="source: the result at the source's size, pixels outside the mask taken "
                                       "from the source. reference: what the reference returns (the work-size "
                                       "image; with crop 'around mask', the box's)."),
                # Optional (with defaults), so prompts saved before these inputs existed still run.
                io.Combo.Input("crop", options=list(CROP_MODES), default="around mask", optional=True,
                               tooltip="around mask: edit only a box around the mask at short_side and paste it "
                                       "back (crop-and-stitch): the region keeps its detail in a large image and "
                                       "every pixel outside the box stays the source's. whole image: scale the "
                                       "whole source to short_side (the cost and detail of a 512 px image). "
                                       "The reference mode always uses the whole image."),
                io.Float.Input("crop_context", default=DEFAULT_CONTEXT, min=0.0, max=4.0, step=0.05, optional=True,
                               tooltip="How much of the surroundings the box keeps: every side of the mask's "
                                       "bounding box grows by this fraction of the region's longer side (0.5: a "
                                       "square region fills half the box's side)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Image encoder for the autostop (OpenAI ViT-B/32 as the reference)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The edited image."),
                io.Image.Output(display_name="rounds", tooltip="The source (the box, when cropped) then every "
                                                              "round, at the work size."),
                io.String.Output(display_name="report", tooltip="Rounds, similarities, stop reason, UNet evaluations."),
                similarity_chart_output("rounds"),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, image, mask, positive, negative, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, split_ratio: float, loops: int, min_loops: int, max_loops: int,
                sim_threshold: float, mode: str, inversion: str, mask_mode: str, short_side: int, output_size: str,
                crop: str = "around mask", crop_context: float = DEFAULT_CONTEXT, clip_vision=None) -> io.NodeOutput:
        require_valid_widgets(cls, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                              split_ratio=split_ratio, loops=loops, min_loops=min_loops, max_loops=max_loops,
                              sim_threshold=sim_threshold, mode=mode, inversion=inversion, mask_mode=mask_mode,
                              short_side=short_side, output_size=output_size, crop=crop, crop_context=crop_context)
        source = edit_source(image, mask)  # NaN in the image or mask, wrong shapes: refused before the CLIP runs
        for name, conditioning in (("positive", positive), ("negative", negative)):
            require_conditioning_width(model, conditioning, name)
        settings = EditSettings(
            seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, split_ratio=split_ratio,
            policy=LoopPolicy(loops=loops, min_loops=min_loops, max_loops=max_loops, threshold=sim_threshold),
            mode=mode, solver=inversion, mask_mode=mask_mode, short_side=short_side,
            output_size=output_size, crop=crop, crop_context=crop_context)
        inversion_text = exceptional_text(clip)
        require_text_width(model, inversion_text.context.shape[-1], "The CLIP input's text embedding",
                           "connect the CLIP of the MODEL's own checkpoint (SD2.1-base for the official weights).")
        result = run_edit(model, inversion_text, vae, source, positive, negative, settings, clip_vision)
        chart = similarity_chart(result.report.get("similarities", []), sim_threshold, result.report["stop_reason"])
        return io.NodeOutput(result.image, result.round_images, result.report_text(), chart)

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..ezigen_lib.autostop import LoopPolicy
from ..ezigen_lib.chart import similarity_chart
from ..ezigen_lib.input_checks import latent_warnings
from ..ezigen_lib.generate import GenerationSettings, run_generation
from ..ezigen_lib.family import require_conditioning_width
from .common import autostop_inputs, require_valid_widgets, similarity_chart_output


class EZIGenSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EZIGenSampler",
            display_name="EZIGen Sampler",
            category="EZIGen",
            description="Full EZIGen generation from a MODEL patched by Patch UNet Attention: one pass where text "
                        "alone sets the layout and the subject is transferred in the last split_ratio of the steps, "
                        "then loops that re-noise the result and transfer the subject again until two rounds look "
                        "alike (CLIP similarity) or the loop limit is reached.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Patch UNet Attention (its start/end are overridden "
                                                "here: the sampler controls when the subject is injected)."),
                io.Conditioning.Input("positive", tooltip="The target prompt."),
                io.Conditioning.Input("negative", tooltip="Negative prompt of the first pass."),
                io.Latent.Input("latent_image", tooltip="An empty latent (EmptyLatentImage) of the SD checkpoint."),
                io.Vae.Input("vae", tooltip="Decodes each round (for the similarity and the round images)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the first pass (as KSampler); each loop derives its own noise from it."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Steps of the full schedule (N)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance, first pass and loops."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="ddpm",
                               tooltip="ddpm reproduces the reference's DDPM ancestral sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform",
                               tooltip="ddim_uniform gives the reference's timesteps (981, 961, ..., 1 for 50 steps; "
                                       "in faithful mode exactly the reference's for every step count)."),
                io.Float.Input("split_ratio", default=0.4, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the steps that transfer the subject's appearance (the rest is "
                                       "text-only layout); the loops re-run this last share. 0 = plain text-to-image."),
                *autostop_inputs("loops", fewest=0),
                io.Combo.Input("mode", options=list(GenerationSettings.MODES), default="faithful",
                               tooltip="faithful: the reference's method (unit-variance start noise, its timesteps, "
                                       "sampled VAE round trip, noise to t=400 but denoise from t=381, the empty "
                                       "prompt as the loops' negative: wire it into loop_negative). clean: re-noise "
                                       "the latent exactly to the loop's start and keep the negative prompt."),
                io.Conditioning.Input("loop_negative", optional=True,
                                      tooltip="Negative prompt of the loops: the reference uses the empty prompt "
                                              "(CLIPTextEncode with no text), which faithful mode needs here. In "
                                              "clean mode it defaults to the negative."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Image encoder for the autostop similarity (OpenAI ViT-B/32 as the "
                                            "reference). Without it the latents are compared instead."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The final latent."),
                io.Image.Output(display_name="image", tooltip="The final image."),
                io.Image.Output(display_name="rounds", tooltip="The image of every round, first pass first."),
                io.String.Output(display_name="report", tooltip="Loops, similarities, stop reason, UNet evaluations "
                                                                "and timings, as JSON."),
                similarity_chart_output("loops"),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, split_ratio: float, loops: int, min_loops: int, max_loops: int,
                sim_threshold: float, mode: str, loop_negative=None, clip_vision=None) -> io.NodeOutput:
        require_valid_widgets(cls, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                              split_ratio=split_ratio, loops=loops, min_loops=min_loops, max_loops=max_loops,
                              sim_threshold=sim_threshold, mode=mode)
        for name, conditioning in (("positive", positive), ("negative", negative), ("loop_negative", loop_negative)):
            require_conditioning_width(model, conditioning, name)
        settings = GenerationSettings(
            seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, split_ratio=split_ratio,
            policy=LoopPolicy(loops=loops, min_loops=min_loops, max_loops=max_loops, threshold=sim_threshold),
            mode=mode)
        result = run_generation(model, positive, negative, latent_image, vae, settings, loop_negative, clip_vision)
        result.report["warnings"] = latent_warnings(latent_image) + result.report.get("warnings", [])
        out_latent = {k: v for k, v in latent_image.items() if k != "noise_mask"}
        out_latent["samples"] = result.latent
        chart = similarity_chart(result.report["similarities"], sim_threshold, result.report["stop_reason"])
        return io.NodeOutput(out_latent, result.image, result.round_images, result.report_text(), chart)

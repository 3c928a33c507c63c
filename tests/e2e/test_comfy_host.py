"""The test harness itself, against a real ComfyUI with core nodes only.

If these fail, every other e2e test is meaningless: they prove that a UI-format workflow written
the way the frontend saves it converts to an API prompt ComfyUI accepts and executes, that bypass /
mute / reroute / primitive nodes convert as the editor would, and that failures surface with the
server's own messages.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_host import (
    ComfyServer,
    PromptFailed,
    PromptRejected,
    WorkflowError,
    ui_to_api,
    ui_workflow_errors,
)

SD15_NAME = "sd15_random.safetensors"  # linked into models/checkpoints by the comfy_server fixture
# Node ids of the hand-written workflow below.
CKPT, POS, NEG, LATENT, SAMPLER, DECODE, SAVE, NOTE, REROUTE = 1, 2, 3, 4, 5, 6, 7, 8, 9


def _node(nid: int, ntype: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
          widgets: list[Any] | None = None, mode: int = 0, title: str | None = None) -> dict[str, Any]:
    """One node as the frontend saves it (position and size are irrelevant to the server)."""
    node: dict[str, Any] = {
        "id": nid, "type": ntype, "pos": [nid * 250, 100], "size": [220, 100], "flags": {},
        "order": nid, "mode": mode, "inputs": inputs, "outputs": outputs, "properties": {},
    }  # fmt: skip
    if widgets is not None:
        node["widgets_values"] = widgets
    if title:
        node["title"] = title
    return node


def _in(name: str, typ: str, link: int | None, widget: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": typ, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def _out(name: str, typ: str, links: list[int]) -> dict[str, Any]:
    return {"name": name, "type": typ, "links": links}


def txt2img_workflow(seed: int, steps: int = 2, prefix: str = "e2e_host") -> dict[str, Any]:
    """CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage 64x64 -> KSampler -> VAEDecode
    -> SaveImage, in UI format, with a Note and a Reroute (on the VAE) the converter must skip."""
    links = [
        [1, CKPT, 0, SAMPLER, 0, "MODEL"],
        [2, CKPT, 1, POS, 0, "CLIP"],
        [3, CKPT, 1, NEG, 0, "CLIP"],
        [4, POS, 0, SAMPLER, 1, "CONDITIONING"],
        [5, NEG, 0, SAMPLER, 2, "CONDITIONING"],
        [6, LATENT, 0, SAMPLER, 3, "LATENT"],
        [7, SAMPLER, 0, DECODE, 0, "LATENT"],
        [8, CKPT, 2, REROUTE, 0, "VAE"],
        [10, REROUTE, 0, DECODE, 1, "VAE"],
        [9, DECODE, 0, SAVE, 0, "IMAGE"],
    ]
    nodes = [
        _node(CKPT, "CheckpointLoaderSimple", [],
              [_out("MODEL", "MODEL", [1]), _out("CLIP", "CLIP", [2, 3]), _out("VAE", "VAE", [8])],
              [SD15_NAME]),
        _node(POS, "CLIPTextEncode", [_in("clip", "CLIP", 2), _in("text", "STRING", None, widget=True)],
              [_out("CONDITIONING", "CONDITIONING", [4])], ["a photo of a cat"], title="Positive"),
        _node(NEG, "CLIPTextEncode", [_in("clip", "CLIP", 3)],
              [_out("CONDITIONING", "CONDITIONING", [5])], ["blurry"], title="Negative"),
        _node(LATENT, "EmptyLatentImage", [], [_out("LATENT", "LATENT", [6])], [64, 64, 1]),
        _node(SAMPLER, "KSampler",
              [_in("model", "MODEL", 1), _in("positive", "CONDITIONING", 4),
               _in("negative", "CONDITIONING", 5), _in("latent_image", "LATENT", 6),
               _in("seed", "INT", None, widget=True)],
              [_out("LATENT", "LATENT", [7])],
              [seed, "randomize", steps, 7.0, "euler", "normal", 1.0]),
        _node(DECODE, "VAEDecode", [_in("samples", "LATENT", 7), _in("vae", "VAE", 10)],
              [_out("IMAGE", "IMAGE", [9])]),
        _node(SAVE, "SaveImage", [_in("images", "IMAGE", 9)], [], [prefix]),
        _node(NOTE, "Note", [], [], ["UI-only: must not reach the server"]),
        _node(REROUTE, "Reroute", [_in("", "*", 8)], [_out("", "VAE", [10])]),
    ]  # fmt: skip
    return {
        "last_node_id": 9, "last_link_id": 10, "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }  # fmt: skip


def _insert_between(wf: dict[str, Any], link_id: int, node: dict[str, Any], typ: str) -> None:
    """Splice a one-in/one-out node (input 0, output 0 of type ``typ``) into link ``link_id``."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    link = next(lk for lk in wf["links"] if lk[0] == link_id)
    new_link = wf["last_link_id"] + 1
    wf["last_link_id"] = new_link
    dst, dst_slot = link[3], link[4]
    link[3], link[4] = node["id"], 0
    node["inputs"][0]["link"] = link_id
    node["outputs"][0]["links"] = [new_link]
    wf["links"].append([new_link, node["id"], 0, dst, dst_slot, typ])
    nodes[dst]["inputs"][dst_slot]["link"] = new_link
    wf["nodes"].append(node)
    wf["last_node_id"] = max(wf["last_node_id"], node["id"])


def _upscale_node(nid: int, mode: int) -> dict[str, Any]:
    """LatentUpscaleBy x2: visible in the output size, so whether it ran is easy to assert."""
    return _node(nid, "LatentUpscaleBy", [_in("samples", "LATENT", None)], [_out("LATENT", "LATENT", [])],
                 ["nearest-exact", 2.0], mode=mode)  # fmt: skip


def _single_image(server: ComfyServer, entry: dict[str, Any]) -> Path:
    images = server.output_images(entry)
    assert len(images) == 1, images
    assert images[0].is_file(), images[0]
    assert images[0].is_relative_to(server.base_dir / "output")
    return images[0]


# --------------------------------------------------------------------------------------------


def test_server_serves_core_nodes(comfy_server: ComfyServer, sd15_checkpoint: Path) -> None:
    assert sd15_checkpoint.name == SD15_NAME
    info = comfy_server.object_info()
    assert len(info) > 300
    assert SD15_NAME in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert (comfy_server.base_dir / "user" / "default" / "comfy.settings.json").is_file()
    assert "To see the GUI go to" in comfy_server.log_text()


def test_conversion_maps_widgets_links_and_skips_ui_nodes(comfy_server: ComfyServer) -> None:
    prompt = ui_to_api(txt2img_workflow(seed=123, steps=2), comfy_server.object_info())

    assert set(prompt) == {str(i) for i in (CKPT, POS, NEG, LATENT, SAMPLER, DECODE, SAVE)}
    assert prompt[str(SAMPLER)]["inputs"] == {
        "seed": 123, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": ["4", 0],
    }  # fmt: skip - "randomize" (control_after_generate) must not become an input
    assert prompt[str(DECODE)]["inputs"]["vae"] == ["1", 2]  # through the Reroute
    assert prompt[str(POS)]["_meta"]["title"] == "Positive"
    assert prompt[str(LATENT)]["_meta"]["title"] == "Empty Latent Image"


def test_widget_converted_to_socket_takes_the_link(comfy_server: ComfyServer) -> None:
    wf = txt2img_workflow(seed=1)
    sampler = next(n for n in wf["nodes"] if n["id"] == SAMPLER)
    # A real INT source (PrimitiveInt, V3) feeds "steps"; a frontend-only PrimitiveNode feeds "cfg".
    sampler["inputs"] += [_in("steps", "INT", 11, widget=True), _in("cfg", "FLOAT", 12, widget=True)]
    wf["nodes"] += [
        _node(20, "PrimitiveInt", [], [_out("INT", "INT", [11])], [3, "fixed"]),
        _node(21, "PrimitiveNode", [], [_out("FLOAT", "FLOAT", [12])], [4.5, "fixed"]),
    ]
    wf["links"] += [[11, 20, 0, SAMPLER, 5, "INT"], [12, 21, 0, SAMPLER, 6, "FLOAT"]]

    prompt = ui_to_api(wf, comfy_server.object_info())
    assert prompt[str(SAMPLER)]["inputs"]["steps"] == ["20", 0]
    assert prompt[str(SAMPLER)]["inputs"]["cfg"] == 4.5
    assert prompt["20"]["inputs"] == {"value": 3}
    assert "21" not in prompt
    assert ui_workflow_errors(wf, comfy_server.object_info()) == []


def test_ui_workflow_runs_and_writes_an_image(comfy_server: ComfyServer, seed: int) -> None:
    wf = txt2img_workflow(seed=seed, steps=2)
    assert ui_workflow_errors(wf, comfy_server.object_info()) == []

    entry = comfy_server.run_workflow(wf, timeout=300)

    assert entry["status"]["status_str"] == "success"
    with Image.open(_single_image(comfy_server, entry)) as img:
        assert img.size == (64, 64)


def test_bypassed_node_is_wired_through(comfy_server: ComfyServer, seed: int) -> None:
    """A bypassed LatentUpscaleBy x2 must vanish; the same node active must double the size."""
    bypassed = txt2img_workflow(seed=seed, steps=1)
    _insert_between(bypassed, 7, _upscale_node(30, mode=4), "LATENT")
    active = txt2img_workflow(seed=seed, steps=1)
    _insert_between(active, 7, _upscale_node(30, mode=0), "LATENT")

    prompt = ui_to_api(bypassed, comfy_server.object_info())
    assert "30" not in prompt
    assert prompt[str(DECODE)]["inputs"]["samples"] == [str(SAMPLER), 0]
    with Image.open(_single_image(comfy_server, comfy_server.run(prompt, timeout=300))) as img:
        assert img.size == (64, 64)

    prompt = ui_to_api(active, comfy_server.object_info())
    assert prompt[str(DECODE)]["inputs"]["samples"] == ["30", 0]
    with Image.open(_single_image(comfy_server, comfy_server.run(prompt, timeout=300))) as img:
        assert img.size == (128, 128)


def test_muted_node_is_dropped(comfy_server: ComfyServer) -> None:
    wf = txt2img_workflow(seed=5)
    wf["nodes"].append(_node(40, "PreviewImage", [_in("images", "IMAGE", 41)], [], [], mode=2))
    wf["links"].append([41, DECODE, 0, 40, 0, "IMAGE"])
    next(n for n in wf["nodes"] if n["id"] == DECODE)["outputs"][0]["links"].append(41)
    assert "40" not in ui_to_api(wf, comfy_server.object_info())


def test_static_errors_wrong_link_type_and_missing_node(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    wf = txt2img_workflow(seed=7)
    # Wire CLIP into KSampler.model (the editor would refuse; a hand-edited file may not).
    for link in wf["links"]:
        if link[0] == 1:
            link[2], link[5] = 1, "CLIP"
    next(n for n in wf["nodes"] if n["id"] == CKPT)["outputs"][1]["links"].append(1)
    wf["nodes"].append(_node(50, "EZIGenDoesNotExist", [], [], [1, 2]))

    errors = ui_workflow_errors(wf, info)
    assert any("link 1 " in e and "'model'" in e and "'MODEL'" in e for e in errors), errors
    assert any("node 50" in e and "EZIGenDoesNotExist" in e for e in errors), errors

    with pytest.raises(WorkflowError, match=r"node 50: unknown node type 'EZIGenDoesNotExist'"):
        ui_to_api(wf, info)


def test_static_errors_widget_count(comfy_server: ComfyServer) -> None:
    wf = txt2img_workflow(seed=8)
    next(n for n in wf["nodes"] if n["id"] == SAMPLER)["widgets_values"].pop(1)  # lose "randomize"
    errors = ui_workflow_errors(wf, comfy_server.object_info())
    assert errors == [errors[0]] and "node 5 (KSampler): 6 widget values, expected 7" in errors[0], errors


def test_server_rejection_carries_node_errors(comfy_server: ComfyServer, seed: int) -> None:
    prompt = ui_to_api(txt2img_workflow(seed=seed), comfy_server.object_info())
    prompt[str(SAMPLER)]["inputs"]["sampler_name"] = "no_such_sampler"

    with pytest.raises(PromptRejected) as info:
        comfy_server.queue(prompt)

    assert info.value.status_code == 400
    assert info.value.error["type"] == "prompt_outputs_failed_validation"
    errors = info.value.node_errors[str(SAMPLER)]["errors"]
    assert errors[0]["type"] == "value_not_in_list"
    assert "no_such_sampler" in errors[0]["details"]


def test_runtime_failure_carries_the_exception(comfy_server: ComfyServer, seed: int) -> None:
    broken = comfy_server.base_dir / "models" / "checkpoints" / "zz_broken.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    try:
        wf = txt2img_workflow(seed=seed)
        next(n for n in wf["nodes"] if n["id"] == CKPT)["widgets_values"] = [broken.name]
        with pytest.raises(PromptFailed) as info:
            comfy_server.run_workflow(copy.deepcopy(wf), timeout=120)
    finally:
        broken.unlink()

    assert info.value.execution_error is not None
    assert info.value.execution_error["node_id"] == str(CKPT)
    assert info.value.exception_message


def test_partially_valid_prompt_is_rejected_unless_allowed(comfy_server: ComfyServer, seed: int) -> None:
    """ComfyUI runs the valid outputs of a half-broken graph with HTTP 200; the harness refuses."""
    prompt = ui_to_api(txt2img_workflow(seed=seed, steps=1), comfy_server.object_info())
    prompt["90"] = {"class_type": "ImageScaleBy",
                    "inputs": {"image": [str(DECODE), 0], "upscale_method": "bogus", "scale_by": 1.0}}
    prompt["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0], "filename_prefix": "bad"}}

    with pytest.raises(PromptRejected) as info:
        comfy_server.queue(prompt)
    assert info.value.status_code == 200
    assert info.value.node_errors["90"]["errors"][0]["type"] == "value_not_in_list"

    entry = comfy_server.wait(comfy_server.queue(prompt, allow_partial=True), timeout=300)
    assert [p.name.startswith("e2e_host") for p in comfy_server.output_images(entry)] == [True]


def test_server_flags_follow_what_the_host_understands(comfy_server: ComfyServer, tmp_path: Path) -> None:
    """--disable-api-nodes only where the host declares it undeprecated (an unknown flag kills main.py)."""
    from comfy_host import host_understands

    for name, line, expected in [
        ("current", 'parser.add_argument("--disable-api-nodes", action="store_true", help="Disable API nodes.")', True),
        ("deprecated", 'parser.add_argument("--disable-api-nodes", action="store_true", help="DEPRECATED: no-op.")',
         False),
        ("absent", 'parser.add_argument("--cpu", action="store_true")', False),
    ]:
        (tmp_path / name / "comfy").mkdir(parents=True)
        (tmp_path / name / "comfy" / "cli_args.py").write_text(f"import argparse\nparser = argparse.ArgumentParser()\n{line}\n")
        assert host_understands(tmp_path / name, "--disable-api-nodes") is expected, name
    command = comfy_server.command()
    assert ("--disable-api-nodes" in command) == host_understands(comfy_server.root, "--disable-api-nodes")
    assert "--base-directory" in command and comfy_server.running  # the host started with exactly these flags

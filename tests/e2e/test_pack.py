"""The pack as users meet it: installed like ComfyUI-Manager does, registry metadata, self-describing nodes."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from comfy_host import ComfyServer, PromptRejected

REPO = Path(__file__).resolve().parents[2]
OUR_NODES = {"EZIGenLoadEncoder", "EZIGenEncodeSubject", "EZIGenPatchUNetAttention", "EZIGenSampler",
             "EZIGenLoadCLIPVision", "EZIGenEdit", "EZIGenSaveSubject", "EZIGenLoadSubject", "EZIGenSubjectPrompt"}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def test_installs_like_comfyui_manager_into_a_clean_host(tmp_path):
    """A plain copy of the tracked files in custom_nodes/, `pip install -r requirements.txt`, start."""
    pack = tmp_path / "base" / "custom_nodes" / "ComfyUI-EZIGen"
    for name in tracked_files():
        target = pack / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(pack / "requirements.txt")],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    with ComfyServer(tmp_path / "base") as server:
        info = server.object_info()
        log = server.log_text()
    assert OUR_NODES <= set(info), sorted(OUR_NODES - set(info))
    pack_lines = [line for line in log.splitlines() if "custom_nodes/ComfyUI-EZIGen" in line]
    assert pack_lines and not [line for line in pack_lines if "IMPORT FAILED" in line], pack_lines
    # core's own audio nodes (nodes_audio*.py, 0.8.0 also nodes_lt_audio.py) fail without torchaudio (installed
    # only for 0.28.2, whose comfy/sd.py needs it); nothing else may fail
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line]
    assert all(re.search(r"IMPORT FAILED: nodes_\w*audio\w*\.py", line) for line in failed), failed


def test_pyproject_meets_the_registry_rules():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    name = project["name"]
    assert name == name.lower() and "comfyui" not in name and len(name) < 100 and re.fullmatch(r"[a-z0-9_-]+", name)
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"] == {"file": "LICENSE"} and (REPO / "LICENSE").is_file()
    assert project["urls"]["Repository"].startswith("https://")
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert key in comfy
    from packaging.specifiers import SpecifierSet

    from ezigen_lib.host import comfy_version

    # node-semver reads it as the Manager does (tests/e2e/test_registry.py); as a PEP 440 specifier it says the same
    supported = SpecifierSet(comfy["requires-comfyui"])
    hosts = re.findall(r"^\s*([0-9.]+)\)\s*venv=", (REPO / "scripts" / "setup_env.sh").read_text(), re.M)
    assert sorted(hosts) == ["0.28.2", "0.3.75", "0.8.0"]  # the hosts CI sets up and tests
    assert all(h in supported for h in hosts) and ".".join(map(str, comfy_version())) in supported
    assert "0.3.74" not in supported and "0.38.1" in supported, "requires-comfyui: from the oldest tested release on"
    requirements = [r.strip() for r in (REPO / "requirements.txt").read_text().splitlines() if r.strip()]
    for deps in (project["dependencies"], requirements):
        assert not [d for d in deps if re.match(r"(torch|torchvision|torchaudio)\b", d)]
    assert sorted(project["dependencies"]) == sorted(requirements)


def test_every_node_explains_itself(comfy_server):
    info = comfy_server.object_info()
    problems = []
    for node_id in OUR_NODES:
        node = info[node_id]
        if node["category"] != "EZIGen" or len(node.get("description", "")) < 40:
            problems.append(f"{node_id}: category {node['category']!r} / short description")
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                if not options.get("tooltip"):
                    problems.append(f"{node_id}.{name}: no tooltip")
        tooltips = node.get("output_tooltips") or []
        if len(tooltips) != len(node["output"]) or not all(tooltips):
            problems.append(f"{node_id}: outputs without tooltips")
    assert problems == []


@pytest.mark.parametrize("node,widget,folder,expected", [
    ("EZIGenLoadEncoder", "adapter_name", "ezigen", "ezigen_lib.convert"),
    ("EZIGenLoadCLIPVision", "clip_name", "clip_vision", "clip-vit-base-patch32"),
    ("EZIGenLoadSubject", "subject_name", "ezigen_subjects", "written by Save EZIGen Subject"),
])
def test_missing_model_file_names_the_folder_and_the_file_expected(comfy_server, node, widget, folder, expected):
    prompt = {"1": {"class_type": node, "inputs": {widget: "missing.safetensors"}},
              "9": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    if node in ("EZIGenLoadEncoder", "EZIGenLoadSubject"):
        prompt["2"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd21base_random.safetensors"}}
    if node == "EZIGenLoadEncoder":
        prompt["1"]["inputs"]["encoder_model"] = ["2", 0]
    if node == "EZIGenLoadSubject":  # a valid encoder, so that only the missing subject is refused
        prompt["3"] = {"class_type": "EZIGenLoadEncoder",
                       "inputs": {"adapter_name": "checkpoint-200000/model.safetensors", "encoder_model": ["2", 0]}}
        prompt["1"]["inputs"]["encoder"] = ["3", 0]
    with pytest.raises(PromptRejected) as info:
        comfy_server.queue(prompt)
    text = str(info.value.node_errors)
    assert f"'missing.safetensors' is not in models/{folder}" in text and expected in text
    assert str(comfy_server.base_dir) not in text  # no server paths or folder listings


def test_every_node_has_a_docs_page_served_to_the_frontend(comfy_server):
    """web/docs/<NodeId>.md for every node, each input named in it, its pictures served beside it."""
    import requests

    info = comfy_server.object_info()
    base = f"{comfy_server.url}/extensions/ComfyUI-EZIGen/docs"
    problems = []
    for node_id in sorted(OUR_NODES):
        r = requests.get(f"{base}/{node_id}.md", timeout=30)
        if r.status_code != 200:
            problems.append(f"{node_id}.md: HTTP {r.status_code}")
            continue
        page = r.text
        inputs = [n for section in ("required", "optional") for n in info[node_id]["input"].get(section, {})]
        problems += [f"{node_id}.md: input {n!r} not described" for n in inputs if f"**{n}**" not in page]
        for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
            got = requests.get(f"{base}/{picture}", timeout=30)
            if got.status_code != 200 or not got.content.startswith(b"\x89PNG"):
                problems.append(f"{node_id}.md: picture {picture} not served ({got.status_code})")
    assert problems == []
    pictures = {p for node_id in OUR_NODES for p in re.findall(r"\]\((images/[^)]+)\)", (REPO / "web" / "docs" / f"{node_id}.md").read_text())}
    assert {"images/split_timeline.png", "images/rounds_strip.png", "images/similarity_chart.png",
            "images/edit_mask_result.png"} <= pictures

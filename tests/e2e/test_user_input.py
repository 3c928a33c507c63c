"""Issues 12 and 27 through the real server: what a user (or an attacker) sends over the API is refused with a
message that says what to do, and a replaced adapter file is loaded anew; NaN in images and masks, save names
and failed writes, faint mask hazes and long thin sources end in the pack's own clear errors or warnings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_host import PromptFailed, PromptRejected, node_id, set_inputs

from ezigen_lib.crop import Box, crop_box
from ezigen_prompts import ADAPTER, SD15, api_prompt, images_of, saver_of, small


def generate_prompt(server, seed, **sampler):
    prompt = small(api_prompt(server, "ezigen_generate.json"), seed)
    set_inputs(prompt, "EZIGenSampler", **{"seed": seed, "steps": 3, "loops": 1, **sampler})
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"input_{seed}_{nid}"
    return prompt


def edit_prompt(server, seed, **edit):
    prompt = small(api_prompt(server, "ezigen_edit.json"), seed)
    set_inputs(prompt, "EZIGenEdit", seed=seed, steps=4, short_side=64, **{"loops": 1, **edit})
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"input_edit_{seed}_{nid}"
    return prompt


def run_raw(server, prompt) -> dict:
    """POST the prompt as raw JSON: requests refuses to encode NaN, a browser or script may well send it."""
    with requests.Session() as http:
        http.trust_env = False
        r = http.post(f"{server.url}/prompt", data=json.dumps({"prompt": prompt, "client_id": server.client_id}),
                      headers={"Content-Type": "application/json"}, timeout=60)
    r.raise_for_status()
    return server.wait(r.json()["prompt_id"])


def failure_of(server, prompt, raw=False) -> str:
    with pytest.raises(PromptFailed) as info:
        run_raw(server, prompt) if raw else server.run(prompt)
    return info.value.exception_message


def test_nan_threshold_is_refused_before_the_run(server, seed):
    message = failure_of(server, generate_prompt(server, seed, sim_threshold=float("nan")), raw=True)
    assert message.startswith("EZIGen Sampler: sim_threshold must be a finite number, got nan")


@pytest.mark.parametrize("node,widget", [("EZIGenSampler", "mode"), ("EZIGenEdit", "mask_mode"),
                                         ("EZIGenEdit", "output_size")])
def test_unknown_option_values_are_refused(server, seed, node, widget):
    """0.3.75 lets a V3 node's unknown option through to execute, where the node refuses it; newer cores
    refuse it themselves at queue time. Either way nothing runs and the message names input and value."""
    make = generate_prompt if node == "EZIGenSampler" else edit_prompt
    try:
        server.run(make(server, seed, **{widget: "bogus"}))
    except PromptRejected as rejected:  # the host's own check (0.8.0)
        assert f"{widget}: 'bogus' not in" in str(rejected)
    except PromptFailed as failed:  # the node's check (0.3.75)
        message = failed.exception_message
        assert f"{widget} must be one of" in message and "got 'bogus'" in message
    else:
        pytest.fail(f"{node} ran with {widget} = 'bogus'")


def test_edit_work_size_is_bounded(server, seed):
    Image.fromarray(np.full((1, 4096, 3), 120, np.uint8)).save(server.base_dir / "input" / "one_row.png")
    prompt = edit_prompt(server, seed)
    prompt["970"] = {"class_type": "LoadImage", "inputs": {"image": "one_row.png"}}
    prompt["971"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 4096, "height": 1}}
    set_inputs(prompt, "EZIGenEdit", image=["970", 0], mask=["971", 0], crop="whole image")
    message = failure_of(server, prompt)
    assert "the source (1 x 4096) at short_side 64 would be edited at 64 x 262144" in message
    assert "limit of 4,194,304 pixels (2048 x 2048)" in message
    set_inputs(prompt, "EZIGenEdit", crop="around mask")  # the mask covers it all: so does the box
    message = failure_of(server, prompt)
    assert "the box around the mask (1 x 4096 source pixels) would be edited at 64 x 262144" in message
    assert "limit of 4,194,304 pixels (2048 x 2048)" in message
    assert server.running


def test_edit_names_a_clip_of_another_model(server, seed):
    prompt = edit_prompt(server, seed)
    prompt["980"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}}
    set_inputs(prompt, "EZIGenEdit", clip=["980", 1])
    message = failure_of(server, prompt)
    assert message.startswith("The CLIP input's text embedding is 768-wide but the MODEL (SD20) expects 1024-wide")


def test_a_replaced_adapter_file_is_loaded_again(server, stand_in_models, seed):
    """Same name, new content: the loader's fingerprint (path, size, mtime) makes ComfyUI run it again."""
    from ezigen_lib.checkpoint import load_adapter, save_adapter

    weights = load_adapter(stand_in_models["ezigen"])
    target = server.base_dir / "models" / "ezigen" / "replaced_adapter.safetensors"
    save_adapter(weights, target)
    prompt = generate_prompt(server, seed, loops=0)
    set_inputs(prompt, "EZIGenLoadEncoder", adapter_name="replaced_adapter.safetensors")
    saver = saver_of(prompt, "EZIGenSampler", 1)
    (before,) = images_of(server, server.run(prompt), saver)
    stronger = {k: v * 4 if k.endswith("to_out.0.weight") else v for k, v in weights.state_dict.items()}
    staged = target.with_name("staged.partial")
    save_adapter(type(weights)(state_dict=stronger, info=weights.info), staged)
    os.replace(staged, target)
    (after,) = images_of(server, server.run(prompt), saver)  # the very same prompt
    assert np.abs(after.astype(int) - before.astype(int)).max() > 0
    target.unlink()


def test_sampler_reports_an_ignored_noise_mask(server, seed):
    prompt = generate_prompt(server, seed, loops=0)
    latent = prompt[next(n for n, v in prompt.items() if v["class_type"] == "EmptyLatentImage")]
    prompt["990"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt["991"] = {"class_type": "SetLatentNoiseMask",
                     "inputs": {"samples": [next(n for n, v in prompt.items() if v is latent), 0], "mask": ["990", 0]}}
    set_inputs(prompt, "EZIGenSampler", latent_image=["991", 0])
    history = server.run(prompt)
    (text,) = [t for out in history["outputs"].values() for t in out.get("text", [])]
    assert any("carries a noise_mask" in w for w in json.loads(text)["warnings"])


def test_adapter_name_in_errors_is_relative(server, seed):
    (server.base_dir / "models" / "ezigen" / "broken_adapter.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{x")
    prompt = generate_prompt(server, seed)
    set_inputs(prompt, "EZIGenLoadEncoder", adapter_name="broken_adapter.safetensors")
    message = failure_of(server, prompt)
    assert "EZIGen adapter file 'models/ezigen/broken_adapter.safetensors'" in message
    assert str(server.base_dir) not in message and ADAPTER not in message


# -- issue 27: bad inputs end in the pack's own clear errors ----------------------------------------------------

def upstream_of(prompt: dict, *outputs: str) -> dict:
    """Only the nodes `outputs` need: a test that meets an error early does not run the rest of the workflow."""
    keep, todo = set(), list(outputs)
    while todo:
        nid = todo.pop()
        if nid in keep:
            continue
        keep.add(nid)
        todo += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2
                 and isinstance(v[0], str)]
    return {nid: node for nid, node in prompt.items() if nid in keep}


def refusal_of(server, prompt) -> dict:
    """The execution error of a prompt sent as raw JSON (NaN, lone surrogates), as a client meets it."""
    with pytest.raises(PromptFailed) as info:
        run_raw(server, prompt)
    error = info.value.execution_error
    assert str(server.base_dir) not in error["exception_message"] and len(error["exception_message"]) < 600
    return error


NAN = float("nan")
SOURCE_PIXELS = 80 * 112  # demo_inputs.write_source_image
SUBJECT_PIXELS = 96 * 96  # demo_inputs.write_subject_image


def nan_image(prompt: dict, of: str, nid: str) -> list:
    """An IMAGE of NaN from a real core node: ImageBlend with blend_factor NaN (the API lets NaN through)."""
    prompt[nid] = {"class_type": "ImageBlend", "inputs": {"image1": of, "image2": of, "blend_factor": NAN,
                                                         "blend_mode": "normal"}}
    return [nid, 0]


@pytest.mark.parametrize("case", ["edit mask", "edit mask half", "edit image", "subject image", "subject mask",
                                  "patch mask"])
def test_non_finite_images_and_masks_are_refused_by_name(server, seed, case):
    prompt = edit_prompt(server, seed)
    edit, encode = node_id(prompt, "EZIGenEdit"), node_id(prompt, "EZIGenEncodeSubject")
    source, subject = prompt[edit]["inputs"]["image"], prompt[encode]["inputs"]["image"]
    solid = lambda value, width, height: {"class_type": "SolidMask",
                                          "inputs": {"value": value, "width": width, "height": height}}
    if case == "edit mask":
        prompt["972"] = solid(NAN, 112, 80)
        set_inputs(prompt, "EZIGenEdit", mask=["972", 0])
        node, expected = "EZIGen Edit", f"the mask input holds NaN in {SOURCE_PIXELS:,} of its {SOURCE_PIXELS:,} pixels"
    elif case == "edit mask half":  # NaN on the left half only: the box would have covered the whole image
        prompt["972"], prompt["973"] = solid(0.0, 112, 80), solid(NAN, 56, 80)
        prompt["974"] = {"class_type": "MaskComposite", "inputs": {"destination": ["972", 0], "source": ["973", 0],
                                                                   "x": 0, "y": 0, "operation": "add"}}
        set_inputs(prompt, "EZIGenEdit", mask=["974", 0])
        node, expected = "EZIGen Edit", f"the mask input holds NaN in {SOURCE_PIXELS // 2:,} of its {SOURCE_PIXELS:,}"
    elif case == "edit image":
        set_inputs(prompt, "EZIGenEdit", image=nan_image(prompt, source, "975"))
        node, expected = "EZIGen Edit", f"the image input holds NaN in {SOURCE_PIXELS:,} of its {SOURCE_PIXELS:,}"
    elif case == "subject image":
        set_inputs(prompt, "EZIGenEncodeSubject", image=nan_image(prompt, subject, "975"))
        node = "Encode Subject (EZIGen)"
        expected = f"the image input holds NaN in {SUBJECT_PIXELS:,} of its {SUBJECT_PIXELS:,} pixels"
    elif case == "subject mask":
        prompt["972"] = solid(NAN, 96, 96)
        set_inputs(prompt, "EZIGenEncodeSubject", mask=["972", 0])
        node = "Encode Subject (EZIGen)"
        expected = f"the mask input holds NaN in {SUBJECT_PIXELS:,} of its {SUBJECT_PIXELS:,} pixels"
    else:
        prompt["972"] = solid(NAN, 64, 64)
        set_inputs(prompt, "EZIGenPatchUNetAttention", mask=["972", 0])
        node, expected = "Patch UNet Attention (EZIGen)", "the mask input holds NaN in 4,096 of its 4,096 pixels"
    error = refusal_of(server, upstream_of(prompt, node_id(prompt, "PreviewAny")))  # the report: Edit and before
    assert error["exception_type"] == "ezigen.InputValueError"
    assert error["exception_message"].startswith(f"{node}: {expected}"), error["exception_message"]
    assert "give it a number" in error["exception_message"]


def save_prompt(server, seed: int, prefix: str, **save) -> dict:
    """Encode Subject -> Save EZIGen Subject and nothing else (the encoding is cached between tests of one seed)."""
    prompt = small(api_prompt(server, "ezigen_single_pass.json"), seed)
    encode = node_id(prompt, "EZIGenEncodeSubject")
    prompt["950"] = {"class_type": "EZIGenSaveSubject",
                     "inputs": {"subject": [encode, 0], "filename_prefix": prefix, **save}}
    return upstream_of(prompt, "950")


def subject_files(server) -> list:
    folder = server.base_dir / "models" / "ezigen_subjects"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("prefix,expected", [
    ("\udc80dog", "filename_prefix '\\udc80dog' holds a lone surrogate (U+DC80 at character 1), which is not a "
                  "character"),
    ("a:b", "filename_prefix 'a:b' contains ':', which file names cannot hold on every system (Windows reads 'a:' "
            "as a drive)"),
    ("x" * 300, "... (300 characters) is too long"),
    ("C:\\Users\\me\\rex", "is an absolute path"),
    ("\\\\server\\share\\rex", "is an absolute path"),
    ("CON/rex", "filename_prefix 'CON/rex' has the name 'CON': Windows reserves 'CON' for a device"),
    ("dogs/com1.v2/rex", "Windows reserves 'com1'"),
    ("dogs./rex", "has the folder name 'dogs.', which ends with a dot: Windows drops it"),
], ids=["surrogate", "colon", "long", "drive", "unc", "CON", "com1", "trailing-dot"])
def test_save_names_are_unicode_and_portable(server, prefix, expected):
    before = subject_files(server)
    error = refusal_of(server, save_prompt(server, 27, prefix))
    assert error["exception_type"] == "ezigen.SubjectFileError"
    assert expected in error["exception_message"], error["exception_message"]
    assert "absolute" not in error["exception_message"] or "absolute" in expected
    assert subject_files(server) == before


def test_a_subject_prompt_with_a_lone_surrogate_is_refused(server):
    error = refusal_of(server, save_prompt(server, 27, "surrogate_words", subject_prompt="a \ud83d dog"))
    assert error["exception_type"] == "ezigen.SubjectFileError"
    assert error["exception_message"].startswith("subject_prompt 'a \\ud83d dog' holds a lone surrogate (U+D83D at "
                                                 "character 3)")


@pytest.fixture
def read_only_folder(server, seed):
    """A subfolder of models/ezigen_subjects that not even root may write in (the immutable attribute: root ignores
    permission bits); skipped where chattr is missing or the filesystem has no such attribute."""
    folder = server.base_dir / "models" / "ezigen_subjects" / f"locked_{seed}"
    folder.mkdir(parents=True)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not available here (not root, or the filesystem has no immutable attribute)")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_folder_is_reported_and_nothing_is_left(server, read_only_folder):
    name = read_only_folder.name
    error = refusal_of(server, save_prompt(server, 27, f"{name}/rex"))
    assert error["exception_type"] == "ezigen.SubjectFileError"
    assert error["exception_message"].strip() == (
        f"Save EZIGen Subject could not write 'models/ezigen_subjects/{name}/rex_00001.safetensors': ComfyUI may not "
        "write there (a read-only or locked folder?) (EPERM). Nothing was saved: make the folder writable for the user "
        "ComfyUI runs as, then queue the prompt again.")
    assert list(read_only_folder.iterdir()) == []


@pytest.fixture
def full_folder(server, seed):
    """A subfolder of models/ezigen_subjects on its own 8 KiB tmpfs, smaller than any subject file: a real full disk.
    Skipped where mounting is not allowed (it needs root with CAP_SYS_ADMIN)."""
    folder = server.base_dir / "models" / "ezigen_subjects" / f"full_{seed}"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_reported_and_no_partial_file_is_left(server, full_folder):
    name = full_folder.name
    error = refusal_of(server, save_prompt(server, 27, f"{name}/rex"))
    assert error["exception_type"] == "ezigen.SubjectFileError"
    assert error["exception_message"].strip() == (
        f"Save EZIGen Subject could not write 'models/ezigen_subjects/{name}/rex_00001.safetensors': the disk is full "
        "(ENOSPC). Nothing was saved: free some space on the disk, then queue the prompt again.")
    assert list(full_folder.iterdir()) == []  # the partial file is gone


def edit_report(history: dict) -> dict:
    (text,) = [t for out in history["outputs"].values() for t in out.get("text", [])]
    return json.loads(text)


def test_a_faint_mask_haze_does_not_make_the_box_the_whole_image(server, seed):
    """A 20 x 20 square painted at 1.0 on a background of 1e-6 (a segmentation's haze): the box is drawn around the
    square, as for a clean mask, and the report and log say the haze was left out."""
    prompt = edit_prompt(server, seed)
    prompt["976"] = {"class_type": "SolidMask", "inputs": {"value": 1e-6, "width": 112, "height": 80}}
    prompt["977"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 20, "height": 20}}
    prompt["978"] = {"class_type": "MaskComposite", "inputs": {"destination": ["976", 0], "source": ["977", 0],
                                                               "x": 50, "y": 30, "operation": "add"}}
    set_inputs(prompt, "EZIGenEdit", mask=["978", 0], short_side=64)
    report = edit_report(server.run(prompt))
    box, work = crop_box(80, 112, Box(30, 50, 20, 20), 64)
    assert report["crop"] == {"box": box.as_list(), "work_size": list(work)}
    assert box.height * box.width < 80 * 112
    (warning,) = [w for w in report["warnings"] if "faint values" in w]
    assert warning.startswith(f"{80 * 112 - box.height * box.width:,} pixels of the mask outside the crop box hold "
                              "faint values (at most 1e-06, below 0.5/255")
    assert "faint values" in server.log_text()


@pytest.mark.parametrize("width,painted,crop,expected", [
    (200, (0, 200), "whole image", "the source (1 x 200) is 1 px on its short side: at short_side 64 it would be "
                                   "scaled up 64x (edited at 64 x 12800), more than EZIGen Edit's limit of 16x"),
    (200, (0, 200), "around mask", "the box around the mask (1 x 200 source pixels, in a 1 x 200 source) is 1 px on "
                                   "its short side: at short_side 64 it would be scaled up 64x"),
    (2048, (900, 1100), "around mask", "the box around the mask (1 x 400 source pixels, in a 1 x 2048 source) is 1 px "
                                       "on its short side: at short_side 64 it would be scaled up 64x (edited at 64 x "
                                       "25600)"),
])
def test_a_long_thin_source_is_refused_at_once(server, seed, width, painted, crop, expected):
    """Within the work-pixel limit, these ran for 6 to 7 minutes and 10 GiB on a CPU before issue 27."""
    row = np.zeros((1, width, 4), np.uint8)
    row[..., :3] = 120
    row[0, :, 3] = 255
    row[0, painted[0]:painted[1], 3] = 0  # transparent = painted: LoadImage's mask
    Image.fromarray(row, "RGBA").save(server.base_dir / "input" / f"row_{width}.png")
    prompt = edit_prompt(server, seed)
    prompt["979"] = {"class_type": "LoadImage", "inputs": {"image": f"row_{width}.png"}}
    set_inputs(prompt, "EZIGenEdit", image=["979", 0], mask=["979", 1], crop=crop, short_side=64)
    with pytest.raises(PromptFailed) as info:  # refused before any sampling: well within the timeout
        server.run(upstream_of(prompt, node_id(prompt, "PreviewAny")), timeout=180)
    assert info.value.execution_error["exception_type"] == "ezigen.EditInputError"
    message = info.value.exception_message
    assert message.startswith(expected) and "use a source at least 4 px on its short side" in message, message

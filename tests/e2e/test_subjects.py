"""Subjects on disk, on the real server: Save EZIGen Subject then Load EZIGen Subject reproduces the image bit
for bit, the saved file shows in the dropdown at once, and a subject of another layout is refused with a
message that names the adapter it needs."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from comfy_host import PromptFailed, node_id, set_inputs

from ezigen_prompts import ADAPTER, SD15, api_prompt, images_of, small

WORKFLOW = "ezigen_single_pass.json"
OTHER_ADAPTER_NAME = "ezigen_sd21base.safetensors"  # the same stand-in adapter under a second name (conftest)


@dataclass(frozen=True)
class Saved:
    seed: int
    name: str  # as Save EZIGen Subject reported it
    image: np.ndarray  # the image sampled with the freshly encoded subject
    history: dict


def single_pass(server, seed: int, tag: str) -> dict:
    """The shipped single-pass workflow, small: encoder, Encode Subject, patch, KSampler, SaveImage."""
    prompt = small(api_prompt(server, WORKFLOW), seed)
    set_inputs(prompt, "KSampler", seed=seed, steps=3)
    set_inputs(prompt, "SaveImage", filename_prefix=f"subjects_{tag}_{seed}")
    return prompt


def load_instead_of_encode(prompt: dict, name: str) -> None:
    """Encode Subject replaced by Load EZIGen Subject on the same encoder; its words go to a PreviewAny."""
    encode = node_id(prompt, "EZIGenEncodeSubject")
    encoder = prompt.pop(encode)["inputs"]["encoder"]
    prompt["960"] = {"class_type": "EZIGenLoadSubject", "inputs": {"encoder": encoder, "subject_name": name}}
    prompt["961"] = {"class_type": "PreviewAny", "inputs": {"source": ["960", 1]}}
    set_inputs(prompt, "EZIGenPatchUNetAttention", subject=["960", 0])


def texts_of(history: dict, node: str) -> list[str]:
    return list(history["outputs"][node]["text"])


@pytest.fixture(scope="module")
def saved(server) -> Saved:
    """One run that encodes a subject, saves it into a subfolder and samples with it."""
    seed = random.randrange(1, 2**31)
    prompt = single_pass(server, seed, "fresh")
    encode = node_id(prompt, "EZIGenEncodeSubject")
    prompt["950"] = {"class_type": "EZIGenSaveSubject",
                     "inputs": {"subject": [encode, 0], "filename_prefix": f"e2e/subject_{seed}",
                                "subject_prompt": "a dog"}}
    history = server.run(prompt)
    (name,) = texts_of(history, "950")
    (image,) = images_of(server, history)
    return Saved(seed, name, image, history)


def test_the_saved_subject_is_listed_at_once(server, saved):
    assert saved.name == f"e2e/subject_{saved.seed}_00001.safetensors"
    assert (server.base_dir / "models" / "ezigen_subjects" / saved.name).is_file()
    info = server.object_info(refresh=True)
    load, save = info["EZIGenLoadSubject"], info["EZIGenSaveSubject"]
    assert saved.name in load["input"]["required"]["subject_name"][1]["options"]  # a new subfolder, listed
    assert list(load["input"]["required"]) == ["encoder", "subject_name"]
    assert load["output"] == ["EZIGEN_SUBJECT", "STRING"] and load["output_name"] == ["subject", "subject_prompt"]
    assert save["output_node"] is True and save["output"] == ["STRING"]
    assert list(save["input"]["required"]) == ["subject", "filename_prefix"]
    assert list(save["input"]["optional"]) == ["subject_prompt"]
    assert load["category"] == save["category"] == "EZIGen"


def test_loading_the_saved_subject_gives_the_same_image_bit_for_bit(server, saved):
    prompt = single_pass(server, saved.seed, "loaded")
    load_instead_of_encode(prompt, saved.name)
    history = server.run(prompt)
    (image,) = images_of(server, history)
    assert np.array_equal(image, saved.image)
    assert texts_of(history, "961") == ["a dog"]
    other = single_pass(server, saved.seed, "other_subject")  # the control: another subject, same sampling seed
    set_inputs(other, "EZIGenEncodeSubject", seed=saved.seed + 1)
    (different,) = images_of(server, server.run(other))
    assert not np.array_equal(different, saved.image)


def test_a_subject_of_another_layout_is_refused_naming_the_adapter_it_needs(server, saved, seed):
    prompt = single_pass(server, seed, "sd15_encoder")
    load_instead_of_encode(prompt, saved.name)
    prompt["900"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}}
    set_inputs(prompt, "EZIGenLoadEncoder", encoder_model=["900", 0])
    with pytest.raises(PromptFailed) as info:
        server.run(prompt)
    message = info.value.exception_message
    assert message.startswith(f"The subject 'models/ezigen_subjects/{saved.name}' was encoded for the adapter "
                              f"'{ADAPTER}' with an encoder of layout SD20 (widths 320/640/1280), but the encoder "
                              f"given has layout SD15 (widths 320/640/1280) (adapter '{ADAPTER}')"), message
    assert f"Load the adapter '{ADAPTER}' in Load EZIGen Encoder with the SD20 checkpoint's MODEL" in message
    assert str(server.base_dir) not in message


def test_same_layout_under_another_adapter_name_is_used_with_a_warning(server, saved):
    prompt = single_pass(server, saved.seed, "renamed_adapter")
    load_instead_of_encode(prompt, saved.name)
    set_inputs(prompt, "EZIGenLoadEncoder", adapter_name=OTHER_ADAPTER_NAME)
    (image,) = images_of(server, server.run(prompt))
    assert np.array_equal(image, saved.image)  # the same weights under another name
    assert (f"was encoded for the adapter '{ADAPTER}' and is used with '{OTHER_ADAPTER_NAME}'"
            in server.log_text())


@pytest.mark.parametrize("prefix,expected", [
    ("x" * 300, "over the filesystem's limit of 255 bytes per file or folder name"),
    (".git/x", "has a part that starts with '.' ('.git')"),
])
def test_a_prefix_the_filesystem_or_load_would_refuse_is_refused_before_writing(server, seed, prefix, expected):
    prompt = single_pass(server, seed, "bad_prefix")
    encode = node_id(prompt, "EZIGenEncodeSubject")
    prompt["950"] = {"class_type": "EZIGenSaveSubject", "inputs": {"subject": [encode, 0], "filename_prefix": prefix}}
    folder = server.base_dir / "models" / "ezigen_subjects"
    before = sorted(folder.rglob("*")) if folder.exists() else []
    with pytest.raises(PromptFailed) as info:
        server.run(prompt)
    error = info.value.execution_error
    assert error["exception_type"] == "ezigen.SubjectFileError"
    message = error["exception_message"]
    assert expected in message and str(server.base_dir) not in message and len(message) < 500, message
    assert (sorted(folder.rglob("*")) if folder.exists() else []) == before

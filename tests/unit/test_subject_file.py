"""Subject files: saved and loaded bit for bit; foreign, damaged or other-layout files and names that leave
the folder are refused with messages that say what is expected; nothing is ever overwritten."""
import dataclasses
import logging
import os
import sys

import folder_paths
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import comfy.model_management

from ezigen_lib.capture import encode_subject
from ezigen_lib.checkpoint import AdapterInfo, AdapterWeights, save_adapter
from ezigen_lib.inject import apply_subject
from ezigen_lib.subject_format import feature_keys, SubjectFileError, load_subject, require_subject_fits
from ezigen_lib.subject_saving import next_subject_path, save_new_subject, save_subject

from tiny_models import load_pack, random_adapter_state, random_context, sample, tiny_encoder, tiny_model, tiny_vae

ADAPTER = "tiny/adapter.safetensors"
SHOWN = "models/ezigen_subjects/bad.safetensors"


@pytest.fixture(scope="module")
def encoder():
    return dataclasses.replace(tiny_encoder(), name=ADAPTER)


@pytest.fixture(scope="module")
def subject(encoder):
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        return encode_subject(encoder.model, tiny_vae(), random_context(), images, None, 3, 64, encoder.info.widths,
                              adapter=encoder.name)


def stored(subject):
    """The tensors and metadata Save EZIGen Subject writes, to be altered into a bad file."""
    tensors = {k: f.contiguous() for k, f in zip(feature_keys(len(subject.features)), subject.features)}
    metadata = {"format": "ezigen-subject", "format_version": "1", "family": subject.family,
                "widths": ",".join(str(f.shape[-1]) for f in subject.features), "adapter": subject.adapter,
                "resolution": "64", "image_count": "2", "subject_prompt": ""}
    return tensors, metadata


def test_encode_subject_records_what_made_it(subject):
    assert subject.family == "TinySD" and subject.adapter == ADAPTER  # the tiny models' ComfyUI config class


def test_round_trip_is_bit_identical_and_samples_the_same(tmp_path, subject, encoder):
    path = tmp_path / "dog.safetensors"
    save_subject(path, subject, "a dog")
    loaded, metadata = load_subject(path, "models/ezigen_subjects/dog.safetensors")
    for fresh, back in zip(subject.features, loaded.features, strict=True):
        assert back.dtype == fresh.dtype == torch.float16
        assert back.device == comfy.model_management.intermediate_device()
        assert torch.equal(back, fresh)
    assert (loaded.image_count, loaded.resolution, loaded.family, loaded.adapter) == (2, 64, "TinySD", ADAPTER)
    assert metadata["subject_prompt"] == "a dog" and metadata["format"] == "ezigen-subject"
    model = tiny_model(seed=7)
    fresh_out = sample(apply_subject(model, encoder, subject, 1.0, 0.0, 1.0), seed=4, steps=4)
    loaded_out = sample(apply_subject(model, encoder, loaded, 1.0, 0.0, 1.0), seed=4, steps=4)
    assert torch.equal(fresh_out, loaded_out)
    assert not torch.equal(fresh_out, sample(model, seed=4, steps=4))  # the subject does act


def _write_variant(path, subject, change):
    tensors, metadata = stored(subject)
    change(tensors, metadata)
    save_file(tensors, str(path), metadata)


def _poison(tensors, key, value):
    """One value of one feature replaced (a file damaged, or written by a run that overflowed)."""
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[7] = value


BAD_FILES = {
    "not safetensors": (lambda p, s: p.write_bytes(b"\x08" + b"\x00" * 7 + b"{x"),
                        "it is damaged or not a safetensors file"),
    "a plain safetensors (e.g. a LoRA)": (lambda p, s: save_file({"lora_up.weight": torch.zeros(2, 2)}, str(p)),
                                          "it is not an EZIGen subject (its metadata has no format 'ezigen-subject'; "
                                          "it holds 1 tensors: 'lora_up.weight')"),
    "an adapter": (lambda p, s: save_adapter(AdapterWeights(random_adapter_state(), AdapterInfo(
                       tuple(f.shape[-1] for f in s.features), 32, "tiny", "test")), p),
                   "it is an EZIGen adapter, not a subject: put it in models/ezigen and load it with Load EZIGen "
                   "Encoder"),
    "a newer format": (lambda p, s: _write_variant(p, s, lambda t, m: m.update(format_version="2")),
                       "it is subject format version '2'; this version of ComfyUI-EZIGen reads version 1"),
    "a feature missing": (lambda p, s: _write_variant(p, s, lambda t, m: t.pop("features.7")),
                          "1 of the 16 feature tensors are missing (features.7)"),
    "an extra tensor": (lambda p, s: _write_variant(p, s, lambda t, m: t.update(extra=torch.zeros(1))),
                        "it holds 1 tensor(s) that are not subject features (e.g. 'extra')"),
    "fp32 features": (lambda p, s: _write_variant(p, s, lambda t, m: t.update({"features.3": t["features.3"].float()})),
                      "tensor 'features.3' is torch.float32, expected torch.float16"),
    "a feature of rank 2": (
        lambda p, s: _write_variant(p, s, lambda t, m: t.update({"features.0": t["features.0"][0]})),
        "tensor 'features.0' has shape (128, 64), expected (1, tokens, 64)"),
    "widths not matching the tensors": (
        lambda p, s: _write_variant(p, s, lambda t, m: m.update(widths=",".join(["64"] * 16))),
        "tensor 'features.2' has shape"),
    "tokens not a multiple of the images": (
        lambda p, s: _write_variant(p, s, lambda t, m: t.update({"features.5": t["features.5"][:, :-1]})),
        "with tokens a multiple of the 2 image(s)"),
    "no image count": (lambda p, s: _write_variant(p, s, lambda t, m: m.update(image_count="0")),
                       "its metadata field image_count='0' is invalid"),
    "no family": (lambda p, s: _write_variant(p, s, lambda t, m: m.pop("family")),
                  "its metadata field family=None is invalid: expected a model family name"),
    "a NaN feature": (lambda p, s: _write_variant(p, s, lambda t, m: _poison(t, "features.4", float("nan"))),
                      "tensor 'features.4' contains NaN or infinite values"),
    "an infinite feature": (lambda p, s: _write_variant(p, s, lambda t, m: _poison(t, "features.15", float("-inf"))),
                            "tensor 'features.15' contains NaN or infinite values"),
    "an adapter name of 200,000 characters": (
        lambda p, s: _write_variant(p, s, lambda t, m: m.update(adapter="a" * 200_000)),
        "its metadata is 200"),
    "an adapter name of 2,000 characters": (
        lambda p, s: _write_variant(p, s, lambda t, m: m.update(adapter="a" * 2000)),
        "its metadata field adapter='aaaa"),
    "words of 5,000 characters": (
        lambda p, s: _write_variant(p, s, lambda t, m: m.update(subject_prompt="dog " * 1250)),
        "its metadata field subject_prompt='dog dog"),
    "a format version of 10,000 characters": (
        lambda p, s: _write_variant(p, s, lambda t, m: m.update(format_version="9" * 10_000)),
        "it is subject format version '999"),
    "a family of 100 characters": (
        lambda p, s: _write_variant(p, s, lambda t, m: m.update(family="S" * 100)),
        "its metadata field family='SSS"),
    "a tensor name of 10,000 characters": (
        lambda p, s: _write_variant(p, s, lambda t, m: t.update({"x" * 10_000: torch.zeros(1)})),
        "tensor(s) that are not subject features (e.g. 'xxx"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_files_that_are_not_subjects_are_refused_by_name(tmp_path, subject, case):
    write, expected = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    write(path, subject)
    with pytest.raises(SubjectFileError) as info:
        load_subject(path, SHOWN)
    message = str(info.value)
    assert message.startswith(f"EZIGen subject file '{SHOWN}': ") and expected in message, message
    assert "written by Save EZIGen Subject" in message and str(tmp_path) not in message
    assert len(message) < 500, len(message)  # whatever the file holds, the message stays short


def test_a_subject_of_the_sd_layout_loads(tmp_path):
    """The real widths (320 .. 1280) make the longest metadata a sound file has, within every bound."""
    from ezigen_lib.capture import SubjectFeatures
    from tiny_models import slot_widths

    widths = tuple(slot_widths(320))
    subject = SubjectFeatures(tuple(torch.zeros(1, 2, w, dtype=torch.float16) for w in widths), 2, 512, "SD20",
                              "checkpoint-200000/model.safetensors")
    save_subject(tmp_path / "sd.safetensors", subject, "a dog")
    loaded, metadata = load_subject(tmp_path / "sd.safetensors")
    assert tuple(f.shape[-1] for f in loaded.features) == widths and metadata["widths"].startswith("320,320,640")


def test_encode_subject_refuses_its_own_non_finite_features():
    """A damaged encoder checkpoint (one NaN weight) would give a subject that turns every image black."""
    encoder = tiny_encoder()
    unet = encoder.model.model.diffusion_model
    with torch.no_grad():
        unet.input_blocks[0][0].weight.view(-1)[0] = float("nan")
    with torch.inference_mode(), pytest.raises(FloatingPointError) as info:
        encode_subject(encoder.model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3), None, 0, 64,
                       encoder.info.widths, adapter=ADAPTER)
    assert str(info.value).startswith("Encode Subject made NaN or infinite values in tensor 'features.0'")


@pytest.mark.parametrize("change,expected", [
    (lambda s: dataclasses.replace(s, features=(s.features[0] * float("inf"),) + s.features[1:]),
     "The subject to save holds NaN or infinite values in tensor 'features.0'"),
    (lambda s: dataclasses.replace(s, adapter="a" * 5000), "an adapter name of at most 1024 characters"),
    (lambda s: dataclasses.replace(s, family="SD 2.0 <base>"), "a family of at most 64 letters"),
])
def test_a_subject_that_could_not_be_loaded_is_not_saved(tmp_path, subject, change, expected):
    with pytest.raises(SubjectFileError) as info:
        save_new_subject(tmp_path / "s", "x", change(subject), "", "models/ezigen_subjects")
    assert expected in str(info.value) and len(str(info.value)) < 400
    assert not (tmp_path / "s").exists()
    with pytest.raises(SubjectFileError, match="subject_prompt is 2001 characters, more than the 2000"):
        save_new_subject(tmp_path / "s", "x", subject, "w" * 2001, "models/ezigen_subjects")
    assert not (tmp_path / "s").exists()


def test_another_layout_is_refused_naming_the_adapter_it_needs(subject, encoder):
    sd15 = dataclasses.replace(subject, family="SD15", adapter="checkpoint-200000/model.safetensors")
    with pytest.raises(SubjectFileError) as info:
        require_subject_fits(sd15, encoder, "models/ezigen_subjects/dog_00001.safetensors")
    message = str(info.value)
    assert message.startswith("The subject 'models/ezigen_subjects/dog_00001.safetensors' was encoded for the adapter "
                              "'checkpoint-200000/model.safetensors' with an encoder of layout SD15 (widths "
                              "64/128/256), but the encoder given has layout TinySD (widths 64/128/256) (adapter "
                              f"'{ADAPTER}')"), message
    assert "Load EZIGen Encoder with the SD15 checkpoint's MODEL" in message and "encode the subject again" in message
    narrow = dataclasses.replace(subject, features=tuple(f[..., :32] for f in subject.features))
    with pytest.raises(SubjectFileError, match=r"encoder of layout TinySD \(widths 32\), but"):
        require_subject_fits(narrow, encoder, "narrow")


def test_same_layout_under_another_adapter_name_is_accepted_with_a_warning(subject, encoder, caplog):
    renamed = dataclasses.replace(subject, adapter="renamed.safetensors")
    with caplog.at_level(logging.WARNING, logger="EZIGen"):
        require_subject_fits(renamed, encoder, "s")
    assert "encoded for the adapter 'renamed.safetensors' and is used with 'tiny/adapter.safetensors'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="EZIGen"):
        require_subject_fits(subject, encoder, "s")
    assert caplog.text == ""


def test_a_subject_that_does_not_say_what_made_it_is_not_saved(tmp_path, subject):
    with pytest.raises(SubjectFileError, match="does not say which encoder made it"):
        save_new_subject(tmp_path, "x", dataclasses.replace(subject, adapter=None), "", "models/ezigen_subjects")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prefix,expected", [
    ("", "filename_prefix is empty"),
    ("   ", "filename_prefix is empty"),
    ("/etc/subject", "is an absolute path"),
    ("\\\\server\\share\\s", "is an absolute path"),
    ("C:/Users/me/s", "is an absolute path"),
    ("../s", "uses '..', which would leave models/ezigen_subjects"),
    ("dogs/../../s", "uses '..'"),
    ("dogs\\..\\..\\s", "uses '..'"),
    ("dogs/", "does not end with a file name: add one, e.g. 'dogs/rex' saves "
              "models/ezigen_subjects/dogs/rex_00001.safetensors"),
    (".", "does not end with a file name"),
    ("dogs/.", "does not end with a file name"),
    ("dog:1", "contains ':'"),
    ("dogs/rex?", "contains '?'"),
    (".git/x", "has a part that starts with '.' ('.git'): hidden names are left out of ComfyUI's file lists"),
    ("dogs/.rex", "has a part that starts with '.' ('.rex')"),
    ("x" * 221, "is too long: the name 'xxx"),
    ("é" * 111, "would be 257 bytes, over the filesystem's limit of 255 bytes per file or folder name (a file "
                "name's part of the prefix may be 220 bytes"),
    ("d" * 256 + "/x", "would be 256 bytes, over the filesystem's limit of 255 bytes"),
    ("/".join(["d" * 200] * 21) + "/x", "exceed the filesystem's limit of 4096 bytes for a whole path"),
    ("x" * 200_000, "is too long"),
])
def test_prefixes_that_leave_the_folder_are_refused(tmp_path, subject, prefix, expected):
    folder = tmp_path / "ezigen_subjects"
    with pytest.raises(SubjectFileError) as info:
        save_new_subject(folder, prefix, subject, "", "models/ezigen_subjects")
    assert expected in str(info.value) and str(tmp_path) not in str(info.value)
    assert len(str(info.value)) < 500
    assert not tmp_path.joinpath("s").exists() and not folder.exists()


def test_the_longest_prefix_the_filesystem_takes_is_saved(tmp_path, subject):
    name = save_new_subject(tmp_path, "x" * 220, subject, "", "models/ezigen_subjects")
    assert name == "x" * 220 + "_00001.safetensors" and (tmp_path / name).is_file()


KILLED_SAVE = """
import resource, signal, sys
from ezigen_lib.host import bootstrap_inprocess
bootstrap_inprocess(sys.argv[2])
import torch
from ezigen_lib.capture import SubjectFeatures
from ezigen_lib.subject_saving import save_new_subject
features = tuple(torch.ones(1, 4096, 64, dtype=torch.float16) for _ in range(16))  # 8 MiB
subject = SubjectFeatures(features, 1, 64, "TinySD", "tiny/adapter.safetensors")
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # writing past the limit below kills the process, as SIGKILL would
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
save_new_subject(sys.argv[1], "rex", subject, "", "models/ezigen_subjects")
"""


def test_a_save_killed_half_way_leaves_nothing_load_lists(tmp_path, subject):
    import signal
    import subprocess
    import sys

    from conftest import REPO

    folder = tmp_path / "subjects"
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), str(tmp_path / "base")], cwd=REPO,
                          capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGXFSZ, done.stderr.decode()[-2000:]
    (leftover,) = folder.iterdir()
    assert leftover.name.startswith("rex_00001.safetensors.") and leftover.name.endswith(".partial")
    assert 0 < leftover.stat().st_size <= 1 << 20  # killed half-way through the write
    registered = folder_paths.folder_names_and_paths.get("ezigen_subjects")
    folder_paths.folder_names_and_paths["ezigen_subjects"] = ([str(folder)], {".safetensors"})
    try:
        folder_paths.filename_list_cache.pop("ezigen_subjects", None)
        assert folder_paths.get_filename_list("ezigen_subjects") == []
        assert save_new_subject(folder, "rex", subject, "", "models/ezigen_subjects") == "rex_00001.safetensors"
        assert folder_paths.get_filename_list("ezigen_subjects") == ["rex_00001.safetensors"]
    finally:
        if registered is None:
            folder_paths.folder_names_and_paths.pop("ezigen_subjects")
        else:
            folder_paths.folder_names_and_paths["ezigen_subjects"] = registered
        folder_paths.filename_list_cache.pop("ezigen_subjects", None)


def test_numbered_names_in_subfolders_never_overwrite(tmp_path, subject):
    folder = tmp_path / "ezigen_subjects"
    first = save_new_subject(folder, "dogs/rex", subject, "a dog", "models/ezigen_subjects")
    second = save_new_subject(folder, "dogs/rex", subject, "", "models/ezigen_subjects")
    assert first == os.path.join("dogs", "rex_00001.safetensors")
    assert second == os.path.join("dogs", "rex_00002.safetensors")
    (folder / "dogs" / "rex_00007.safetensors").write_bytes(b"someone else's")
    assert save_new_subject(folder, "./dogs//rex", subject, "", "models/ezigen_subjects") == os.path.join(
        "dogs", "rex_00008.safetensors")  # counts on from the highest number; the other file stays as it was
    assert (folder / "dogs" / "rex_00007.safetensors").read_bytes() == b"someone else's"
    with safe_open(str(folder / first), "pt") as f:
        assert f.metadata()["subject_prompt"] == "a dog"
    with pytest.raises(FileExistsError):
        save_subject(folder / first, subject)
    # a name used in another location of the folder (extra_model_paths.yaml) is skipped too
    path, name = next_subject_path(folder, "cat", "models/ezigen_subjects",
                                   taken=lambda n: n == "cat_00001.safetensors")
    assert name == "cat_00002.safetensors" and path == folder / name


def test_folder_registration_and_missing_file_message(tmp_path):
    pack = load_pack()
    folders = pack.nodes.folders
    folder_paths.folder_names_and_paths["ezigen_subjects"] = ([str(tmp_path / "from-yaml")], set())
    folders.register_model_folder()
    paths, extensions = folder_paths.folder_names_and_paths["ezigen_subjects"]
    assert paths == [str(tmp_path / "from-yaml"), os.path.join(folder_paths.models_dir, "ezigen_subjects")]
    assert extensions == {".safetensors"}
    message = folders.check_model_file("ezigen_subjects", "gone.safetensors")
    assert message.startswith("'gone.safetensors' is not in models/ezigen_subjects (it is empty)")
    assert "written by Save EZIGen Subject" in message and str(tmp_path) not in message
    folders.register_model_folder()  # as at start-up: the default folder only
    folder_paths.folder_names_and_paths["ezigen_subjects"] = (paths[1:], extensions)


def test_nodes_save_then_list_then_load(subject, encoder, monkeypatch):
    nodes = load_pack().nodes.subject_files
    folder_paths.get_filename_list("ezigen_subjects")  # a cached listing from before the save
    out = nodes.EZIGenSaveSubject.execute(subject=subject, filename_prefix="unit/dog", subject_prompt="a dog")
    (name,) = out.args
    assert out.ui.as_dict() == {"text": (name,)} and name.startswith(os.path.join("unit", "dog_"))
    assert name in folder_paths.get_filename_list("ezigen_subjects")  # a new subfolder, seen at once
    assert nodes.EZIGenLoadSubject.validate_inputs(subject_name=name) is True
    loaded, prompt = nodes.EZIGenLoadSubject.execute(encoder=encoder, subject_name=name).args
    assert prompt == "a dog" and all(torch.equal(a, b) for a, b in zip(subject.features, loaded.features, strict=True))
    # a filesystem with coarse mtimes (FAT, some network shares) may leave the folder's mtime as it was when the
    # file is added, which ComfyUI's cached list would trust: the save moves the folder's mtime on itself
    folder = os.path.join(folder_paths.models_dir, "ezigen_subjects", "unit")
    before = os.stat(folder)
    folder_paths.get_filename_list("ezigen_subjects")
    saving = sys.modules[nodes.__name__.rsplit(".", 2)[0] + ".ezigen_lib.subject_saving"]
    write = saving._write_new

    def write_on_a_coarse_filesystem(path, data):
        write(path, data)
        os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))  # the addition did not tick the mtime

    monkeypatch.setattr(saving, "_write_new", write_on_a_coarse_filesystem)
    again = nodes.EZIGenSaveSubject.execute(subject=loaded, filename_prefix="unit/dog").args[0]
    assert again != name and again in folder_paths.get_filename_list("ezigen_subjects")
    assert os.stat(folder).st_mtime_ns == before.st_mtime_ns + saving.COARSE_MTIME_TICK_NS
    with pytest.raises(ValueError, match="encoder of layout SD15"):
        nodes.EZIGenLoadSubject.execute(encoder=encoder, subject_name=nodes.EZIGenSaveSubject.execute(
            subject=dataclasses.replace(subject, family="SD15"), filename_prefix="unit/sd15").args[0])

"""Issue 27 in the library and the nodes: non-finite images and masks are refused where they enter, by input name
and pixel count; a failed save says why with the file as the user knows it and leaves nothing behind; save names
are valid Unicode and portable to Windows; a faint mask haze does not widen the crop box; long thin sources and
tiny boxes are bounded. The same cases through the real server: tests/e2e/test_user_input.py."""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil

import pytest
import torch

from ezigen_lib import subject_saving
from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.capture import encode_subject
from ezigen_lib.errors import exception_text
from ezigen_lib.crop import (DEFAULT_CONTEXT, MAX_ASPECT, MAX_SCALE_UP, PAINTED_THRESHOLD, Box, crop_box, mask_bounds,
                             processing_size, work_area)
from ezigen_lib.edit import EditSettings, run_edit
from ezigen_lib.edit_source import EditInputError, edit_source
from ezigen_lib.subject_format import SubjectFileError, load_subject
from ezigen_lib.subject_saving import save_new_subject

from tiny_models import random_context, tiny_encoder, tiny_model, tiny_vae

NAN, INF = float("nan"), float("inf")
SHOWN = "models/ezigen_subjects"
POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
EDIT_WIDGETS = dict(seed=1, steps=4, cfg=2.0, sampler_name="euler", scheduler="ddim_uniform", split_ratio=0.5,
                    loops=1, min_loops=1, max_loops=2, sim_threshold=0.99, mode="faithful", inversion="dpmpp_2m",
                    mask_mode="soft", short_side=64, output_size="source")


@pytest.fixture(scope="module")
def encoder():
    return dataclasses.replace(tiny_encoder(), name="tiny/adapter.safetensors")


@pytest.fixture(scope="module")
def subject(encoder):
    with torch.inference_mode():
        return encode_subject(encoder.model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3), None, 3, 64,
                              encoder.info.widths, adapter=encoder.name)


class CountingVAE:
    """The tiny VAE, counting its passes: a check 'where the input enters' refuses before any is made."""

    def __init__(self, vae):
        self.vae, self.passes = vae, 0

    def encode(self, x):
        self.passes += 1
        return self.vae.encode(x)

    def decode(self, x):
        self.passes += 1
        return self.vae.decode(x)

    def __getattr__(self, name):
        return getattr(self.vae, name)


def refused(call) -> str:
    """The pack's InputValueError message (the nodes import the pack as another package: matched by name)."""
    with pytest.raises(ValueError) as info:
        call()
    assert type(info.value).__name__ == "InputValueError", info.value
    return str(info.value)


# -- item 1: NaN and infinity in every IMAGE and MASK input, refused where it enters ----------------------------

def edit_inputs():
    image, mask = torch.rand(1, 40, 56, 3), torch.zeros(40, 56)
    mask[10:30, 10:40] = 1
    return image, mask


@pytest.mark.parametrize("input_name,fill,expected", [
    ("mask", "all", "the mask input holds NaN in 2,240 of its 2,240 pixels"),
    ("mask", "half", "the mask input holds NaN in 1,120 of its 2,240 pixels"),
    ("mask", "inf", "the mask input holds infinity in 1 of its 2,240 pixels"),
    ("image", "half", "the image input holds NaN in 1,120 of its 2,240 pixels"),
    ("image", "inf", "the image input holds infinity in 1 of its 2,240 pixels"),
])
def test_edit_refuses_non_finite_image_and_mask_by_name(nodes, parts, input_name, fill, expected):
    image, mask = edit_inputs()
    target = image[..., 1] if input_name == "image" else mask[None]  # one channel is enough to spoil a pixel
    if fill == "all":
        target.fill_(NAN)
    elif fill == "half":
        target[0, :, :28] = NAN
    else:
        target[0, 3, 5] = -INF
    vae = CountingVAE(parts[1])
    message = refused(lambda: nodes.EZIGenEdit.execute(parts[0], None, vae, image, mask, POSITIVE, NEGATIVE,
                                                       **EDIT_WIDGETS))
    assert message.startswith(f"EZIGen Edit: {expected}: ")
    assert "give it a number" in message and vae.passes == 0


def test_edit_ignores_nan_in_the_unused_alpha_channel(parts):
    image, mask = edit_inputs()
    rgba = torch.cat([image, torch.full((1, 40, 56, 1), NAN)], dim=-1)
    settings = EditSettings(seed=1, steps=4, sampler_name="euler", short_side=64, policy=LoopPolicy(loops=1))
    with torch.inference_mode():
        result = run_edit(parts[0], random_context(5), parts[1], edit_source(rgba, mask), POSITIVE, NEGATIVE, settings)
    assert bool(torch.isfinite(result.image).all())


@pytest.mark.parametrize("input_name", ["image", "mask"])
def test_encode_subject_refuses_non_finite_image_and_mask_by_name(nodes, encoder, input_name):
    image, mask = torch.rand(2, 64, 64, 3), torch.ones(64, 64)
    (image if input_name == "image" else mask)[..., :3, :] = NAN if input_name == "mask" else INF
    vae = CountingVAE(tiny_vae())
    count = "384 of its 8,192" if input_name == "image" else "192 of its 4,096"
    message = refused(lambda: nodes.EZIGenEncodeSubject.execute(encoder, vae, [[random_context(), {}]], image, 3, 64,
                                                                mask=mask))
    kind = "infinity" if input_name == "image" else "NaN"
    assert message.startswith(f"Encode Subject (EZIGen): the {input_name} input holds {kind} in {count} pixels")
    assert vae.passes == 0 and "weights are damaged" not in message


def test_patch_refuses_a_non_finite_subject_mask_by_name(nodes, encoder, subject):
    mask = torch.ones(2, 32, 32)
    mask[1, 0, 0] = NAN
    mask[0, 5, :] = INF
    message = refused(lambda: nodes.EZIGenPatchUNetAttention.execute(tiny_model(7), encoder, subject, 1.0, 0.6, 1.0,
                                                                     mask=mask))
    assert message.startswith("Patch UNet Attention (EZIGen): the mask input holds NaN and infinity in 33 of its "
                              "2,048 pixels")


# -- item 2: a save whose write fails says why, names the file as the user knows it, leaves no temporary file ----

def leftovers(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def save_failure(folder, prefix, subject) -> str:
    with pytest.raises(SubjectFileError) as info:
        save_new_subject(folder, prefix, subject, "", SHOWN)
    message = str(info.value)
    assert str(folder) not in message and "/tmp" not in message and len(message) < 500, message
    return message


def test_a_full_disk_is_reported_and_leaves_no_partial_file(tmp_path, subject, monkeypatch):
    """ENOSPC where a full disk reports it (the data is flushed): injected, as no small filesystem can be made
    everywhere (tests/e2e fills a real tmpfs where mounting is allowed)."""
    folder = tmp_path / "ezigen_subjects"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device", os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(subject_saving.os, "fsync", full)
    message = save_failure(folder, "dogs/rex", subject)
    assert message == ("Save EZIGen Subject could not write 'models/ezigen_subjects/dogs/rex_00001.safetensors': the "
                       "disk is full (ENOSPC). Nothing was saved: free some space on the disk, then queue the prompt "
                       "again.")
    assert leftovers(folder) == []


def test_a_read_only_folder_is_reported(tmp_path, subject, monkeypatch):
    """root ignores permission bits, so the refusal is injected where the kernel would give it: at open."""
    folder = tmp_path / "ezigen_subjects"
    real_open = open

    def read_only(path, mode="r", *args, **kwargs):
        if "x" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(subject_saving, "open", read_only, raising=False)
    message = save_failure(folder, "rex", subject)
    assert message.startswith("Save EZIGen Subject could not write 'models/ezigen_subjects/rex_00001.safetensors': "
                              "ComfyUI may not write there (a read-only folder?) (EACCES). Nothing was saved: make "
                              "the folder writable")
    assert leftovers(folder) == []


def test_a_folder_removed_during_the_save_is_reported(tmp_path, subject, monkeypatch):
    """The folder goes while the file is written: the link into place fails for real (ENOENT)."""
    folder = tmp_path / "ezigen_subjects"
    real_fsync = os.fsync

    def remove_folder(fd):
        real_fsync(fd)
        shutil.rmtree(folder / "dogs")

    monkeypatch.setattr(subject_saving.os, "fsync", remove_folder)
    message = save_failure(folder, "dogs/rex", subject)
    assert message.startswith("Save EZIGen Subject could not write 'models/ezigen_subjects/dogs/rex_00001.safetensors': "
                              "the folder was removed or renamed during the save (ENOENT). Nothing was saved: queue "
                              "the prompt again")
    assert leftovers(folder) == []


def test_a_folder_that_cannot_be_made_or_listed_is_reported(tmp_path, subject, monkeypatch):
    folder = tmp_path / "ezigen_subjects"
    (folder / "dogs").mkdir(parents=True)
    (folder / "cats").write_bytes(b"a file where a folder should be")
    assert "'models/ezigen_subjects/cats' (filename_prefix 'cats/tom'): a file is in the way of a folder of that " \
           "name" in save_failure(folder, "cats/tom", subject)

    def unreadable(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(subject_saving.os, "listdir", unreadable)
    assert "could not write into models/ezigen_subjects (filename_prefix 'dogs/rex'): ComfyUI may not write there" \
           in save_failure(folder, "dogs/rex", subject)
    assert leftovers(folder) == ["cats"]


# -- items 3 and 4: names are valid Unicode, portable, and the messages say what they mean ---------------------

@pytest.mark.parametrize("prefix,expected", [
    ("\udc80", "holds a lone surrogate (U+DC80 at character 1), which is not a character"),
    ("dogs/re\ud800x", "holds a lone surrogate (U+D800 at character 8)"),
    ("a:b", "contains ':', which file names cannot hold on every system (Windows reads 'a:' as a drive)"),
    ("C:\\Users\\me\\s", "is an absolute path"),
    ("c:/s", "is an absolute path"),
    ("\\\\server\\share\\s", "is an absolute path"),
    ("x" * 300, "... (300 characters) is too long"),
    ("CON/rex", "has the name 'CON': Windows reserves 'CON' for a device"),
    ("dogs/nul.tar/rex", "Windows reserves 'nul'"),
    ("com1 .x/rex", "Windows reserves 'com1'"),
    ("LPT\u00b9/rex", "Windows reserves 'LPT\u00b9'"),
    ("CON.v2", "has the name 'CON.v2_00001.safetensors': Windows reserves 'CON'"),
    ("dogs./rex", "has the folder name 'dogs.', which ends with a dot: Windows drops it"),
    ("dogs /rex", "has the folder name 'dogs ', which ends with a space"),
])
def test_names_that_are_not_unicode_or_not_portable_are_refused(tmp_path, subject, prefix, expected):
    folder = tmp_path / "ezigen_subjects"
    message = save_failure(folder, prefix, subject)
    assert expected in message, message
    assert "absolute" not in message or "absolute" in expected
    message.encode("utf-8")  # the message itself can be logged and sent as JSON
    assert not folder.exists()


def test_names_windows_keeps_are_saved_and_a_changed_prefix_is_said(tmp_path, subject, caplog):
    folder = tmp_path / "ezigen_subjects"
    for prefix, name in (("CON", "CON_00001.safetensors"), ("console/nul_x", "console/nul_x_00001.safetensors"),
                         ("h\u00e9bert \u05d0\u200f/r\u00e9x", "h\u00e9bert \u05d0\u200f/r\u00e9x_00001.safetensors")):
        assert save_new_subject(folder, prefix, subject, "", SHOWN).replace(os.sep, "/") == name
        assert (folder / name).is_file() and os.fsencode(folder / name).decode("utf-8")
    with caplog.at_level(logging.WARNING, logger="EZIGen"):
        assert save_new_subject(folder, " ./dogs//rex ", subject, "", SHOWN).replace(os.sep, "/") == \
            "dogs/rex_00001.safetensors"
    assert "filename_prefix ' ./dogs//rex ' was saved as 'dogs/rex_00001.safetensors'" in caplog.text


def test_a_subject_prompt_that_is_not_unicode_is_refused(tmp_path, subject):
    with pytest.raises(SubjectFileError, match=r"subject_prompt 'a \\udc80dog' holds a lone surrogate \(U\+DC80 at "
                                               r"character 3\)"):
        save_new_subject(tmp_path, "rex", subject, "a \udc80dog", SHOWN)
    assert list(tmp_path.iterdir()) == []
    name = save_new_subject(tmp_path, "rex", subject, "a \u202edog\x00\n", SHOWN)  # odd but valid: kept as given
    assert load_subject(tmp_path / name)[1]["subject_prompt"] == "a \u202edog\x00\n"


def test_windows_paths_are_removed_from_library_errors():
    text = exception_text(OSError("cannot open C:\\ComfyUI\\models\\ezigen\\x.bin nor \\\\nas\\share\\models\\y.bin "
                                  "nor C:/Program Files/ComfyUI/z.pt"))
    assert text == "OSError: cannot open <path> nor <path> nor <path>", text


# -- item 5: a faint haze does not make the crop box the whole image ---------------------------------------------

def hazy_mask(height: int = 240, width: int = 320, haze: float = 1e-6) -> torch.Tensor:
    mask = torch.full((1, height, width), haze)
    mask[0, 100:140, 150:190] = 1.0
    return mask


def test_the_box_ignores_values_an_8_bit_mask_stores_as_zero():
    assert mask_bounds(hazy_mask()) == Box(100, 150, 40, 40)
    faint_edge = hazy_mask(haze=0.0)
    faint_edge[0, 90, 150] = 1 / 255  # an 8-bit mask's faintest level counts
    assert mask_bounds(faint_edge) == Box(90, 150, 50, 40)
    assert PAINTED_THRESHOLD == 0.5 / 255


def test_a_hazy_mask_is_edited_around_its_painted_region_and_the_haze_is_reported(parts, caplog):
    image = torch.rand(1, 240, 320, 3, generator=torch.Generator().manual_seed(3))
    settings = EditSettings(seed=1, steps=4, sampler_name="euler", short_side=64, policy=LoopPolicy(loops=1),
                            crop="around mask")
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="EZIGen"):
        result = run_edit(parts[0], random_context(5), parts[1], edit_source(image, hazy_mask()), POSITIVE, NEGATIVE,
                          settings)
    box, work = crop_box(240, 320, Box(100, 150, 40, 40), 64)
    assert result.report["crop"] == {"box": box.as_list(), "work_size": list(work)}
    (warning,) = [w for w in result.report["warnings"] if "faint" in w]
    assert warning.startswith(f"{240 * 320 - box.height * box.width:,} pixels of the mask outside the crop box hold "
                              "faint values (at most 1e-06, below 0.5/255")
    assert "faint values" in caplog.text
    only_haze = torch.full((1, 240, 320), 1e-6)
    with torch.inference_mode():
        unchanged = run_edit(parts[0], random_context(5), parts[1], edit_source(image, only_haze), POSITIVE, NEGATIVE,
                             settings)
    assert torch.equal(unchanged.image, image)
    assert unchanged.report["stop_reason"].startswith("empty mask (its largest value, 1e-06, is below 0.5/255")


# -- item 6: long thin sources and tiny boxes are bounded on both paths -----------------------------------------

def test_a_thin_source_is_refused_with_what_to_change():
    assert MAX_SCALE_UP == MAX_ASPECT == 16
    with pytest.raises(EditInputError, match=r"the source \(1 x 200\) is 1 px on its short side: at short_side 64 it "
                                             r"would be scaled up 64x \(edited at 64 x 12800\), more than EZIGen Edit's "
                                             r"limit of 16x.*at least 4 px on its short side"):
        processing_size(1, 200, 64)
    with pytest.raises(EditInputError, match=r"the source \(8 x 1024\) would be edited at 64 x 8192, 128:1, more "
                                             r"elongated than the 16:1 EZIGen Edit works on: set crop to 'around mask'"):
        processing_size(8, 1024, 64)
    assert processing_size(32, 512, 512) == (512, 8192)  # 16x and 16:1 exactly: still edited


@pytest.mark.parametrize("height,width,painted,expected", [
    (1, 2048, slice(900, 1100), r"the box around the mask \(1 x 400 source pixels, in a 1 x 2048 source\) is 1 px on "
                                r"its short side: at short_side 64 it would be scaled up 64x \(edited at 64 x 25600\)"),
    (1, 200, slice(0, 200), r"the box around the mask \(1 x 200 source pixels, in a 1 x 200 source\) is 1 px"),
    (8, 2048, slice(0, 2048), r"the box around the mask \(8 x 2048 source pixels, in a 8 x 2048 source\) would be "
                              r"edited at 64 x 16384, 256:1, more elongated than the 16:1 EZIGen Edit works on: the "
                              r"source leaves no room to widen it"),
])
def test_a_thin_box_is_refused_with_what_to_change(height, width, painted, expected):
    mask = torch.zeros(1, height, width)
    mask[0, :, painted] = 1.0
    with pytest.raises(EditInputError, match=expected):
        work_area((height, width), mask, 64, DEFAULT_CONTEXT, crop=True)


def test_a_tiny_or_thin_region_gets_more_surroundings_where_the_source_has_room():
    box, work = crop_box(2048, 2048, Box(1000, 1000, 4, 4), 512)  # 8 px box: 64x; widened to 32 px = 16x
    assert (box.height, box.width) == (32, 32) and work == (512, 512) and box.top <= 1000 <= box.top + 28
    box, work = crop_box(2048, 2048, Box(1000, 100, 10, 1000), 64, context=0.0)  # 100:1 with no context
    assert box.height == 63 and box.width == 1000 and box.top <= 1000 and box.top + 63 >= 1010

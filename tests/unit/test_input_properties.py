"""Property tests over every IMAGE, MASK, FLOAT and STRING input of the pack's nodes (issue 27, item 7).

The inputs are read from the nodes' own schemas, so a new input fails `test_every_input_is_covered` until it
is given a case here. What must hold:
- IMAGE and MASK: NaN, +inf or -inf in any number of pixels of any size is refused by the node, naming the
  input and the count, before any model runs.
- FLOAT: NaN, +inf and -inf are refused by name before any work.
- STRING: any text (lone surrogates, control characters, right-to-left marks, very long) is either saved under a
  name that is valid UTF-8, portable to Windows and listed by ComfyUI as returned, with the words read back as
  given, or refused with the pack's short error that repeats no server path.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager

import folder_paths
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ezigen_lib.capture import encode_subject
from ezigen_lib.subject_format import load_subject

from tiny_models import load_pack, random_context, tiny_encoder, tiny_model, tiny_vae
from tiny_sdxl import CLIP_G_WIDTH, CONTEXT_WIDTH, tiny_sdxl_clip

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]
SAMPLER_WIDGETS = dict(seed=1, steps=4, cfg=5.0, sampler_name="euler", scheduler="ddim_uniform", split_ratio=0.5,
                       loops=1, min_loops=1, max_loops=2, sim_threshold=0.99, mode="faithful", loop_negative=NEGATIVE)
EDIT_WIDGETS = dict(seed=1, steps=4, cfg=2.0, sampler_name="euler", scheduler="ddim_uniform", split_ratio=0.5,
                    loops=1, min_loops=1, max_loops=2, sim_threshold=0.99, mode="faithful", inversion="dpmpp_2m",
                    mask_mode="soft", short_side=64, output_size="source", crop="around mask", crop_context=0.5)
PATCH_WIDGETS = dict(strength=1.0, start_percent=0.6, end_percent=1.0)

# (node, input) -> how it is covered below
PIXEL_INPUTS = {("EZIGenEdit", "image"), ("EZIGenEdit", "mask"), ("EZIGenEncodeSubject", "image"),
                ("EZIGenEncodeSubject", "mask"), ("EZIGenPatchUNetAttention", "mask")}
FLOAT_INPUTS = {("EZIGenEdit", name) for name in ("cfg", "split_ratio", "sim_threshold", "crop_context")} | {
    ("EZIGenSampler", name) for name in ("cfg", "split_ratio", "sim_threshold")} | {
    ("EZIGenPatchUNetAttention", name) for name in PATCH_WIDGETS}
STRING_INPUTS = {("EZIGenSaveSubject", "filename_prefix"), ("EZIGenSaveSubject", "subject_prompt"),
                 ("EZIGenSubjectPrompt", "text")}
DISPLAY = {"EZIGenEdit": "EZIGen Edit", "EZIGenEncodeSubject": "Encode Subject (EZIGen)",
           "EZIGenPatchUNetAttention": "Patch UNet Attention (EZIGen)", "EZIGenSampler": "EZIGen Sampler"}


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


@pytest.fixture(scope="module")
def subject(encoder):
    with torch.inference_mode():
        return encode_subject(encoder.model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3), None, 3, 64,
                              encoder.info.widths, adapter="tiny/adapter.safetensors")


def inputs_of_type(pack, *types) -> set[tuple[str, str]]:
    found = set()
    for node in pack.nodes.NODE_LIST:
        schema = node.define_schema()
        found |= {(schema.node_id, spec.id) for spec in schema.inputs if isinstance(spec, types)}
    return found


def test_every_input_is_covered(pack):
    from comfy_api.latest import io

    assert inputs_of_type(pack, io.Image.Input, io.Mask.Input) == PIXEL_INPUTS
    assert inputs_of_type(pack, io.Float.Input) == FLOAT_INPUTS
    assert inputs_of_type(pack, io.String.Input) == STRING_INPUTS


class NoPasses:
    """A VAE that fails the test if anything reaches it: the refusals come before any model work."""

    def __getattr__(self, name):
        raise AssertionError(f"the VAE was used ({name}) although the input was refused")


def refusal(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    assert type(info.value).__name__ == "InputValueError", repr(info.value)
    return str(info.value)


@st.composite
def spoiled(draw, shape: tuple[int, ...], channels: bool):
    """A tensor of `shape` in [0, 1] with NaN/inf in a drawn set of pixels (any channel of them for an IMAGE);
    returns it and the number of spoiled pixels."""
    pixel_shape = shape[:-1] if channels else shape
    count = 1
    for size in pixel_shape:
        count *= size
    chosen = draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=min(count, 40)))
    if draw(st.booleans()):
        chosen = set(range(count))  # all of it, as Solid Mask with value NaN gives
    values = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 1000))))
    flat = values.reshape(count, -1)
    for index in chosen:
        flat[index, draw(st.integers(0, flat.shape[1] - 1))] = draw(NON_FINITE)
    return values, len(chosen)


SIZES = st.tuples(st.integers(1, 24), st.integers(1, 24))


@EXAMPLES
@given(data=st.data(), node_input=st.sampled_from(sorted(PIXEL_INPUTS)), size=SIZES, batch=st.integers(1, 3))
def test_non_finite_pixels_are_refused_by_name(pack, parts, encoder, subject, data, node_input, size, batch):
    node, name = node_input
    nodes = pack.nodes
    h, w = size
    image, mask = torch.rand(1, h, w, 3), torch.ones(h, w)
    if node == "EZIGenEncodeSubject":
        image = torch.rand(batch, h, w, 3)
    bad_shape = {"image": (image.shape, True), "mask": ((batch, h, w) if node != "EZIGenEdit" else (h, w), False)}
    bad, count = data.draw(spoiled(*bad_shape[name]))
    if name == "image":
        image = bad
    else:
        mask = bad
    if node == "EZIGenEdit":
        call = lambda: nodes.EZIGenEdit.execute(parts[0], None, NoPasses(), image, mask, POSITIVE, NEGATIVE,
                                                **EDIT_WIDGETS)
    elif node == "EZIGenEncodeSubject":
        call = lambda: nodes.EZIGenEncodeSubject.execute(encoder, NoPasses(), [[random_context(), {}]], image, 1, 64,
                                                         mask=mask if name == "mask" else None)
    else:
        call = lambda: nodes.EZIGenPatchUNetAttention.execute(tiny_model(7), encoder, subject, **PATCH_WIDGETS,
                                                              mask=mask)
    message = refusal(call)
    pixels = bad.numel() // (bad.shape[-1] if name == "image" else 1)
    assert re.match(rf"{re.escape(DISPLAY[node])}: the {name} input holds (NaN|infinity|NaN and infinity) in "
                    rf"{count:,} of its {pixels:,} pixels: ", message), message


@EXAMPLES
@given(node_input=st.sampled_from(sorted(FLOAT_INPUTS)), value=NON_FINITE)
def test_non_finite_numbers_are_refused_by_name(pack, parts, encoder, subject, node_input, value):
    node, name = node_input
    nodes = pack.nodes
    if node == "EZIGenEdit":
        image, mask = torch.rand(1, 16, 16, 3), torch.ones(16, 16)
        call = lambda: nodes.EZIGenEdit.execute(parts[0], None, NoPasses(), image, mask, POSITIVE, NEGATIVE,
                                                **{**EDIT_WIDGETS, name: value})
    elif node == "EZIGenSampler":
        call = lambda: nodes.EZIGenSampler.execute(parts[0], POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)},
                                                   NoPasses(), **{**SAMPLER_WIDGETS, name: value})
    else:
        call = lambda: nodes.EZIGenPatchUNetAttention.execute(tiny_model(7), encoder, subject,
                                                              **{**PATCH_WIDGETS, name: value})
    assert f"{name} must be a finite number, got {value}" in refusal(call)


# Text: every code point (lone surrogates, controls, bidi marks), separators and the names Windows reserves mixed in,
# and very long runs.
ANY_CHARACTER = st.characters(blacklist_categories=())
TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=40),
    st.lists(st.one_of(st.text(ANY_CHARACTER, max_size=6), st.sampled_from(
        ["/", "\\", ".", "..", " ", "CON", "nul", "COM1", "lpt9.x", "a:b", "\u202e", "\u200f", "\udc80", "\x00",
         "\x1b", "\ufeff", "e\u0301", "\U0001f415"])), max_size=12).map("".join),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "\u00e9", "\U0001f415", "d/"]), st.integers(100, 3000)),
)
RESERVED = re.compile(r"(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])",
                      re.IGNORECASE)


@contextmanager
def subjects_models_dir():
    """The node's models folder pointed at a fresh directory for one example, as ComfyUI would have it."""
    base = tempfile.mkdtemp(prefix="ezigen-strings-")
    saved = folder_paths.models_dir, folder_paths.folder_names_and_paths.get("ezigen_subjects")
    folder_paths.models_dir = base
    folder_paths.folder_names_and_paths["ezigen_subjects"] = ([os.path.join(base, "ezigen_subjects")], {".safetensors"})
    folder_paths.filename_list_cache.pop("ezigen_subjects", None)
    try:
        yield os.path.join(base, "ezigen_subjects")
    finally:
        folder_paths.models_dir = saved[0]
        folder_paths.folder_names_and_paths["ezigen_subjects"] = saved[1]
        folder_paths.filename_list_cache.pop("ezigen_subjects", None)
        shutil.rmtree(base, ignore_errors=True)


def files_under(folder: str) -> list[str]:
    return [os.path.join(root, f) for root, _, files in os.walk(folder) for f in files]


@settings(EXAMPLES, max_examples=400)  # milliseconds each
@given(prefix=TEXT, words=TEXT)
def test_any_text_is_saved_portably_or_refused_clearly(pack, subject, prefix, words):
    with subjects_models_dir() as folder:
        try:
            output = pack.nodes.EZIGenSaveSubject.execute(subject=subject, filename_prefix=prefix,
                                                          subject_prompt=words)
        except ValueError as error:
            assert type(error).__name__ == "SubjectFileError", repr(error)
            message = str(error)
            message.encode("utf-8")  # loggable, and sent to the browser as JSON
            assert ("filename_prefix" in message or "subject_prompt" in message) and len(message) < 600, message
            assert folder not in message and tempfile.gettempdir() + os.sep not in message
            assert not files_under(folder)  # nothing written, not even a temporary file
            reasons = ("surrogate", "absolute", "'..'", "empty", "too long", "Windows reserves", "ends with", "contains",
                       "starts with '.'", "does not end", "subject_prompt")
            event(f"refused: {next((r for r in reasons if r in message), 'other')}")
            return
        name = output.args[0]
        name.encode("utf-8")  # never a name that is not valid UTF-8
        parts = name.split(os.sep)
        assert all(p and not p.endswith((".", " ")) and not RESERVED.fullmatch(p.split(".", 1)[0].rstrip(" "))
                   for p in parts), name
        assert not re.search(r'[<>:"|?*\x00-\x1f]', name), name
        assert [os.path.relpath(f, folder) for f in files_under(folder)] == [name]  # no temporary file left
        assert os.fsencode(os.path.join(folder, name)).decode("utf-8")
        assert name in folder_paths.get_filename_list("ezigen_subjects")  # Load EZIGen Subject lists it as returned
        assert load_subject(os.path.join(folder, name))[1]["subject_prompt"] == words
        event("saved")


@pytest.fixture(scope="module")
def sdxl_clip():
    return tiny_sdxl_clip()


@settings(EXAMPLES, max_examples=40)
@given(words=TEXT, layers=st.sampled_from(["comfy", "final"]))
def test_any_subject_prompt_text_is_encoded(pack, sdxl_clip, words, layers):
    """EZIGen Subject Prompt takes any valid text as CLIPTextEncode does: whole 77-token chunks ('final': the
    first one), SDXL's pooled output, finite values; a lone surrogate (which crashes newer tokenizers) is refused
    by name."""
    try:
        (conditioning,) = pack.nodes.EZIGenSubjectPrompt.execute(clip=sdxl_clip, text=words, layers=layers).args
    except ValueError as error:  # only text that is not valid Unicode, named as such
        assert "not valid Unicode" in str(error) and any(0xD800 <= ord(c) <= 0xDFFF for c in words), repr(error)
        event("refused: surrogate")
        return
    ((context, options),) = conditioning
    assert context.shape[0] == 1 and context.shape[2] == CONTEXT_WIDTH and context.shape[1] % 77 == 0
    assert layers == "comfy" or context.shape[1] == 77
    assert options["pooled_output"].shape == (1, CLIP_G_WIDTH)
    assert bool(torch.isfinite(context).all()) and bool(torch.isfinite(options["pooled_output"]).all())

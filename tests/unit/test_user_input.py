"""What a user (or an attacker) can send: each bad value is refused up front with a message that names the
input, or the run does the right thing and says so; no output stage throws a finished run away."""
import os
import time

import pytest
import torch
from safetensors.torch import save_file

import folder_paths

from ezigen_lib.autostop import LoopPolicy
from ezigen_lib.capture import encode_subject
from ezigen_lib.chart import NOTE_Y, similarity_chart
from ezigen_lib.checkpoint import AdapterFileError, load_adapter, save_adapter, AdapterWeights, AdapterInfo
from ezigen_lib.input_checks import InputValueError
from ezigen_lib.crop import MAX_WORK_PIXELS, processing_size
from ezigen_lib.edit_source import EditInputError
from tiny_models import slot_widths

from .checkpoints import write_malicious_pickle
from tiny_models import (TINY_CHANNELS, random_adapter_state, random_context, tiny_encoder,
                   tiny_model, tiny_vae)

NAN, INF = float("nan"), float("inf")
POSITIVE = [[random_context(100), {}]]
NEGATIVE = [[random_context(101), {}]]


class CountingVAE:
    """The tiny VAE, counting decodes: a check that runs 'up front' refuses before any is made."""

    def __init__(self, vae):
        self.vae, self.decodes = vae, 0

    def encode(self, x):
        return self.vae.encode(x)

    def decode(self, x):
        self.decodes += 1
        return self.vae.decode(x)


SAMPLER_DEFAULTS = dict(seed=1, steps=4, cfg=5.0, sampler_name="euler", scheduler="ddim_uniform", split_ratio=0.5,
                        loops=1, min_loops=1, max_loops=2, sim_threshold=0.99, mode="faithful",
                        loop_negative=NEGATIVE)  # faithful loops need one (it stands for the empty prompt)
EDIT_DEFAULTS = dict(seed=1, steps=4, cfg=2.0, sampler_name="euler", scheduler="ddim_uniform", split_ratio=0.5,
                     loops=1, min_loops=1, max_loops=2, sim_threshold=0.99, mode="faithful", inversion="dpmpp_2m",
                     mask_mode="soft", short_side=64, output_size="source")


def run_sampler(nodes, parts, latent=None, positive=POSITIVE, **widgets):
    model, vae = parts
    vae = CountingVAE(vae)
    latent = {"samples": torch.zeros(1, 4, 8, 8)} if latent is None else latent
    with torch.inference_mode():
        out = nodes.EZIGenSampler.execute(model, positive, NEGATIVE, latent, vae, **{**SAMPLER_DEFAULTS, **widgets})
    return out, vae


def run_edit_node(nodes, parts, clip, positive=POSITIVE, **widgets):
    model, vae = parts
    image, mask = torch.rand(1, 40, 56, 3), torch.zeros(40, 56)
    mask[10:30, 10:40] = 1
    with torch.inference_mode():
        return nodes.EZIGenEdit.execute(model, clip, vae, image, mask, positive, NEGATIVE,
                                        **{**EDIT_DEFAULTS, **widgets})


# -- item 1: the edit work size is bounded ---------------------------------------------------------------

def test_edit_work_size_is_bounded_by_a_pixel_budget():
    assert MAX_WORK_PIXELS == 2048 * 2048
    assert processing_size(2048, 2048, 2048) == (2048, 2048)  # the largest square short_side allows
    assert processing_size(512, 8192, 512) == (512, 8192)  # 16:1 at 512 fits exactly
    with pytest.raises(EditInputError, match=r"1 x 4096\) at short_side 512 would be edited at 512 x 2097152 = "
                                             r"1,073,741,824 pixels, more than EZIGen Edit's limit of 4,194,304"):
        processing_size(1, 4096, 512)
    with pytest.raises(EditInputError, match="set crop to 'around mask'"):
        processing_size(1024, 2100, 2048)


# -- item 2: non-finite values are refused before any work; the chart never loses a run --------------------

@pytest.mark.parametrize("name,value", [("sim_threshold", NAN), ("cfg", INF), ("split_ratio", NAN)])
def test_sampler_refuses_non_finite_values_before_sampling(nodes, parts, name, value):
    model, vae = parts
    counting = CountingVAE(vae)
    with pytest.raises(ValueError, match=f"EZIGen Sampler: {name} must be a finite number, got {value}"):
        with torch.inference_mode():
            nodes.EZIGenSampler.execute(model, POSITIVE, NEGATIVE, {"samples": torch.zeros(1, 4, 8, 8)}, counting,
                                        **{**SAMPLER_DEFAULTS, name: value})
    assert counting.decodes == 0  # refused before the first pass, not after the whole run


def test_edit_and_patch_refuse_non_finite_values(nodes, parts):
    with pytest.raises(ValueError, match="EZIGen Edit: sim_threshold must be a finite number, got nan"):
        run_edit_node(nodes, parts, clip=None, sim_threshold=NAN)
    encoder, vae = tiny_encoder(), tiny_vae()
    with torch.inference_mode():
        subject = encode_subject(encoder.model, vae, random_context(), torch.rand(1, 64, 64, 3), None, 0, 64,
                                 encoder.info.widths)
    for name in ("strength", "start_percent", "end_percent"):
        widgets = {**dict(strength=1.0, start_percent=0.6, end_percent=1.0), name: NAN}
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            nodes.EZIGenPatchUNetAttention.execute(tiny_model(7), encoder, subject, **widgets)
    with pytest.raises(InputValueError, match="sim_threshold must be a finite number"):
        LoopPolicy(threshold=NAN)


def note_has_red(chart: torch.Tensor) -> bool:
    band = (chart[0, NOTE_Y:NOTE_Y + 12].numpy() * 255).astype(int)
    return bool(((band[..., 0] > 150) & (band[..., 1] < 120) & (band[..., 2] < 120)).any())


def test_chart_of_non_finite_values_is_drawn_and_says_so():
    plain = similarity_chart([0.95, 0.98], 0.92, "reached max_loops=2")  # threshold line far below the note
    chart = similarity_chart([NAN, 0.98], 0.92, "reached max_loops=2")
    both = similarity_chart([NAN, 0.98], NAN, "reached max_loops=2")
    assert chart.shape == both.shape == plain.shape == (1, 288, 512, 3) and bool(torch.isfinite(both).all())
    assert note_has_red(chart) and note_has_red(both) and not note_has_red(plain)  # "not drawn: loop 1 is nan"
    odd = similarity_chart([object()], 0.99, "x")  # not a number: left out and named
    assert odd.shape == (1, 288, 512, 3) and note_has_red(odd)
    broken = similarity_chart(None, 0.99, "x")  # anything else that cannot be drawn: a picture that says so
    assert broken.shape == (1, 288, 512, 3) and float(broken.min()) < 0.5


# -- item 4: values outside an option list are refused ------------------------------------------------------

@pytest.mark.parametrize("name", ["mode", "sampler_name", "scheduler"])
def test_sampler_refuses_unknown_options(nodes, parts, name):
    with pytest.raises(ValueError, match=f"EZIGen Sampler: {name} must be one of .*; got 'bogus'"):
        run_sampler(nodes, parts, **{name: "bogus"})


@pytest.mark.parametrize("name", ["mode", "mask_mode", "inversion", "output_size", "scheduler"])
def test_edit_refuses_unknown_options(nodes, parts, name):
    with pytest.raises(ValueError, match=f"EZIGen Edit: {name} must be one of .*; got 'bogus'"):
        run_edit_node(nodes, parts, clip=None, **{name: "bogus"})


def test_every_widget_is_checked_by_name(nodes):
    """require_valid_widgets is given each number and combo widget by name: one left out (a widget added to the
    schema and not to the call) or one that is not a widget is a programming error, not a silent skip."""
    from comfyui_ezigen_under_test.nodes.common import require_valid_widgets

    patch_node = nodes.EZIGenPatchUNetAttention
    require_valid_widgets(patch_node, strength=1.0, start_percent=0.0, end_percent=1.0)
    with pytest.raises(TypeError, match=r"missing \['end_percent'\], not widgets \[\]"):
        require_valid_widgets(patch_node, strength=1.0, start_percent=0.0)
    with pytest.raises(TypeError, match=r"missing \[\], not widgets \['model'\]"):
        require_valid_widgets(patch_node, strength=1.0, start_percent=0.0, end_percent=1.0, model=None)


def test_valid_options_still_run(nodes, parts):
    (latent, image, rounds, report, chart), vae = run_sampler(nodes, parts, mode="clean")
    assert '"mode": "clean"' in report and image.shape == (1, 64, 64, 3)


# -- item 6: every metadata field of an adapter file is checked, naming the file -----------------------------

def write_ours(path, **metadata):
    info = AdapterInfo(widths=tuple(slot_widths(TINY_CHANNELS)), head_dim=32, base_model="tiny", source="test")
    save_adapter(AdapterWeights(random_adapter_state(3), info), path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = {**f.metadata(), **metadata}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if v is not None})
    return path


@pytest.mark.parametrize("field,value,expected", [
    ("head_dim", "0", "a positive whole number"),
    ("head_dim", "-64", "a positive whole number"),
    ("head_dim", "64.0", "a positive whole number"),
    ("head_dim", "9" * 5000, "a positive whole number"),
    ("head_dim", "48", "divides every block width"),
    ("widths", "32,64", "16 comma-separated whole numbers"),
    ("widths", ",".join(["64"] * 16), "the widths of the file's own tensors"),
    ("base_model", "sd2\n<script>", "a short plain name"),
    ("source", "x" * 500, "a short plain name"),
    ("training_steps", "-1", "a whole number of steps"),
    ("format_version", "2", None),
])
def test_crafted_metadata_is_refused_naming_file_and_field(tmp_path, field, value, expected):
    path = write_ours(tmp_path / "crafted.safetensors", **{field: value})
    with pytest.raises(AdapterFileError) as info:
        load_adapter(path, "models/ezigen/crafted.safetensors")
    message = str(info.value)
    assert message.startswith("EZIGen adapter file 'models/ezigen/crafted.safetensors': ")
    if expected is None:
        assert "format version '2' is not supported" in message
    else:
        assert f"metadata field {field}=" in message and expected in message
    assert str(tmp_path) not in message


def test_sound_metadata_loads(tmp_path):
    weights = load_adapter(write_ours(tmp_path / "ok.safetensors"))
    assert weights.info.head_dim == 32 and weights.info.base_model == "tiny" and weights.info.source == "test"


# -- items 7 and 10: the loaders, through their nodes ---------------------------------------------------------

@pytest.fixture
def models_folder(tmp_path):
    saved = {k: folder_paths.folder_names_and_paths.get(k) for k in ("ezigen", "clip_vision")}
    for name in saved:
        (tmp_path / name).mkdir()
        folder_paths.folder_names_and_paths[name] = ([str(tmp_path / name)], set(folder_paths.supported_pt_extensions))
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    for name, value in saved.items():
        if value is None:
            folder_paths.folder_names_and_paths.pop(name, None)
        else:
            folder_paths.folder_names_and_paths[name] = value
    folder_paths.filename_list_cache.clear()


def test_loader_fingerprint_changes_when_the_file_is_replaced(nodes, models_folder):
    path = write_ours(models_folder / "ezigen" / "mine.safetensors")
    first = nodes.EZIGenLoadEncoder.fingerprint_inputs(adapter_name="mine.safetensors", encoder_model=None)
    assert first == nodes.EZIGenLoadEncoder.fingerprint_inputs(adapter_name="mine.safetensors", encoder_model=None)
    time.sleep(0.01)
    replacement = write_ours(models_folder / "new.safetensors", source="other")  # same size, new content
    os.replace(replacement, path)
    assert nodes.EZIGenLoadEncoder.fingerprint_inputs(adapter_name="mine.safetensors", encoder_model=None) != first
    clip = models_folder / "clip_vision" / "c.safetensors"
    save_file({"a": torch.zeros(2)}, str(clip))
    before = nodes.EZIGenLoadCLIPVision.fingerprint_inputs(clip_name="c.safetensors")
    time.sleep(0.01)
    save_file({"a": torch.ones(2)}, str(clip))
    assert nodes.EZIGenLoadCLIPVision.fingerprint_inputs(clip_name="c.safetensors") != before


def test_a_replaced_adapter_is_loaded_anew(nodes, models_folder):
    """The loader reads the file every time it runs: no module-level cache keeps the old weights."""
    path = models_folder / "ezigen" / "mine.safetensors"
    save_file(random_adapter_state(3), str(path))
    model = tiny_model()
    first = nodes.EZIGenLoadEncoder.execute("mine.safetensors", model)[0]
    save_file(random_adapter_state(4), str(path))
    second = nodes.EZIGenLoadEncoder.execute("mine.safetensors", model)[0]
    w1 = first.adapter.model.blocks[0].to_q.weight
    w2 = second.adapter.model.blocks[0].to_q.weight
    torch.testing.assert_close(w2, random_adapter_state(4)["blocks.0.to_q.weight"])
    assert not torch.equal(w1, w2)


def assert_no_internals(message: str, folder) -> None:
    assert str(folder) not in message and "/tmp" not in message
    assert "weights_only" not in message and "arbitrary code" not in message


def test_loader_errors_name_files_relative_to_the_models_folder(nodes, models_folder):
    write_malicious_pickle(models_folder / "ezigen" / "evil.bin")
    (models_folder / "ezigen" / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    for name, fragment in (("evil.bin", "refused without running it"), ("broken.safetensors", "damaged")):
        with pytest.raises(ValueError) as info:  # the pack's own AdapterFileError (imported as its package)
            nodes.EZIGenLoadEncoder.execute(name, tiny_model())
        message = str(info.value)
        assert f"EZIGen adapter file 'models/ezigen/{name}'" in message and fragment in message
        assert_no_internals(message, models_folder)
    import torch as _torch
    from .checkpoints import _RunsCode
    _torch.save({"w": _RunsCode()}, str(models_folder / "clip_vision" / "evil.pt"))
    (models_folder / "clip_vision" / "broken.safetensors").write_bytes(b"\xff" * 64)
    for name in ("evil.pt", "broken.safetensors"):
        with pytest.raises(ValueError) as info:
            nodes.EZIGenLoadCLIPVision.execute(name)
        message = str(info.value)
        assert f"CLIP vision file 'models/clip_vision/{name}'" in message
        assert_no_internals(message, models_folder)
    assert not os.path.exists("/tmp/ezigen-pickle-ran")


def test_torch_advice_to_load_unsafely_is_never_passed_on(tmp_path):
    from ezigen_lib.errors import exception_text
    from .checkpoints import _RunsCode

    path = tmp_path / "evil.pt"
    torch.save({"w": _RunsCode()}, str(path))
    with pytest.raises(Exception) as info:
        torch.load(str(path), weights_only=True)
    assert "weights_only" in str(info.value)  # torch's own text suggests weights_only=False
    text = exception_text(info.value, path, "models/x/evil.pt")
    assert "weights_only" not in text and "arbitrary code" not in text and str(tmp_path) not in text
    assert text.startswith("UnpicklingError")
    assert exception_text(FileNotFoundError(f"No such file: '{path}' or /srv/comfy/models/y.bin"), path,
                          "models/x/evil.pt") == "FileNotFoundError: No such file: 'models/x/evil.pt' or <path>"


def test_missing_file_message_shows_no_server_paths_or_listing(nodes, models_folder):
    save_file({"a": torch.zeros(1)}, str(models_folder / "ezigen" / "private_name.safetensors"))
    message = nodes.folders.check_model_file("ezigen", "missing.safetensors")
    assert message.startswith("'missing.safetensors' is not in models/ezigen (it holds 1 other file(s)")
    assert "private_name" not in message and str(models_folder) not in message


# -- item 8: conditioning and CLIP of another width are named ----------------------------------------------------

def test_conditioning_of_another_width_names_the_input(nodes, parts):
    wide = [[torch.randn(1, 7, 48), {}]]
    with pytest.raises(ValueError, match="The positive conditioning is 48-wide but the MODEL .* expects 32-wide"):
        run_sampler(nodes, parts, positive=wide)
    with pytest.raises(ValueError, match="The positive conditioning is 48-wide but the MODEL .* expects 32-wide"):
        run_edit_node(nodes, parts, clip=None, positive=wide)


# -- item 9: each silent case either does the right thing or says what happened -------------------------------

def test_start_after_end_is_refused(nodes):
    encoder, vae = tiny_encoder(), tiny_vae()
    with torch.inference_mode():
        subject = encode_subject(encoder.model, vae, random_context(), torch.rand(1, 64, 64, 3), None, 0, 64,
                                 encoder.info.widths)
    with pytest.raises(ValueError, match=r"start_percent \(0.8\) is after end_percent \(0.5\)"):
        nodes.EZIGenPatchUNetAttention.execute(tiny_model(7), encoder, subject, 1.0, 0.8, 0.5)
    assert nodes.EZIGenPatchUNetAttention.execute(tiny_model(7), encoder, subject, 1.0, 0.5, 0.5)[0] is not None


def test_noise_mask_is_reported_as_ignored(nodes, parts):
    latent = {"samples": torch.zeros(1, 4, 8, 8), "noise_mask": torch.ones(1, 1, 8, 8)}
    (out_latent, _, _, report, _), _ = run_sampler(nodes, parts, latent=latent)
    assert "carries a noise_mask" in report and "use EZIGen Edit" in report
    assert "noise_mask" not in out_latent
    (_, _, _, plain, _), _ = run_sampler(nodes, parts)
    assert "noise_mask" not in plain


def test_five_dimensional_latent_is_named_as_such(nodes, parts):
    with pytest.raises(ValueError, match=r"The LATENT has 5 dimensions \(shape \(1, 4, 2, 8, 8\)\).*video or 3-D"):
        run_sampler(nodes, parts, latent={"samples": torch.zeros(1, 4, 2, 8, 8)})


def test_batched_subject_prompt_gives_each_image_its_row(nodes):
    encoder, vae = tiny_encoder(), tiny_vae()
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    a, b = random_context(1), random_context(2)
    node = nodes.EZIGenEncodeSubject
    with torch.inference_mode():
        both = node.execute(encoder, vae, [[torch.cat([a, b]), {}]], images, 5, 64)[0]
        with_a = node.execute(encoder, vae, [[a, {}]], images, 5, 64)[0]
        with_b = node.execute(encoder, vae, [[b, {}]], images, 5, 64)[0]
    for k, feature in enumerate(both.features):  # image-major tokens: image 0 with row a, image 1 with row b
        half = feature.shape[1] // 2
        torch.testing.assert_close(feature[:, :half], with_a.features[k][:, :half], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(feature[:, half:], with_b.features[k][:, half:], atol=2e-3, rtol=2e-3)
    assert not torch.allclose(with_a.features[15][:, 4:], with_b.features[15][:, 4:], atol=2e-3)
    with pytest.raises(ValueError, match="batch of 3 prompts but there are 2 subject images"):
        node.execute(encoder, vae, [[torch.cat([a, b, a]), {}]], images, 5, 64)
    with pytest.raises(ValueError, match="holds 2 conditionings"):
        node.execute(encoder, vae, [[a, {}], [b, {}]], images, 5, 64)


def test_every_error_the_nodes_raise_has_a_short_stable_type_name():
    """ComfyUI reports an exception's type as module + class name (execution.full_type_name); a custom node's
    module is its path on the server, so the pack's exceptions name the module 'ezigen'; every one derives from
    the pack's EZIGenError and keeps its standard base. The training errors stay
    as they are: only the command-line trainer raises them."""
    import importlib
    import inspect
    import pkgutil

    import ezigen_lib
    from execution import full_type_name

    from ezigen_lib.errors import EZIGenError

    found, bases = {}, {}
    for info in pkgutil.iter_modules(ezigen_lib.__path__):
        if info.name in ("train", "training"):
            continue
        module = importlib.import_module(f"ezigen_lib.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("ezigen"):  # the pack's own
                found[name] = full_type_name(cls)
                bases[name] = [base for base in (ValueError, RuntimeError) if issubclass(cls, base)]
                assert issubclass(cls, EZIGenError), f"{name} does not derive from the pack's EZIGenError"
    assert found == {name: f"ezigen.{name}" for name in (
        "AdapterFileError", "ClipVisionFileError", "CoreChangedError", "CropError", "EditInputError", "EZIGenError",
        "InputValueError", "MaskPlacementError", "SubjectFileError", "UnsupportedModelError")}
    assert bases == {**{name: [ValueError] for name in (  # the standard bases callers may catch are kept
        "AdapterFileError", "ClipVisionFileError", "CropError", "EditInputError", "InputValueError", "SubjectFileError",
        "UnsupportedModelError")}, "CoreChangedError": [RuntimeError], "MaskPlacementError": [RuntimeError],
        "EZIGenError": []}


def test_values_repeated_in_messages_are_cut_short():
    from ezigen_lib.input_checks import require_choice, require_finite

    with pytest.raises(InputValueError) as info:
        require_choice("mode", "x" * 200_000, ("faithful", "clean"))
    assert len(str(info.value)) < 200 and str(info.value).endswith("... (200000 characters)")  # the value's length
    with pytest.raises(InputValueError) as info:
        require_finite("cfg", "1" * 200_000)
    assert len(str(info.value)) < 200


def test_loader_residual_input_overrides_the_file_and_is_checked(nodes, models_folder):
    """Load EZIGen Encoder's optional residual: 'from file' keeps the file's (a reference SD file: double), a choice
    overrides it, anything else is refused by name before the file is read."""
    path = models_folder / "ezigen" / "res.safetensors"
    save_file(random_adapter_state(3), str(path))
    model = tiny_model()
    assert nodes.EZIGenLoadEncoder.execute("res.safetensors", model)[0].adapter.model.blocks[0].double_residual
    as_file = nodes.EZIGenLoadEncoder.execute("res.safetensors", model, residual="from file")[0]
    single = nodes.EZIGenLoadEncoder.execute("res.safetensors", model, residual="single")[0]
    assert as_file.info.residual == "double" and as_file.adapter.model.blocks[0].double_residual
    assert single.info.residual == "single" and not any(b.double_residual for b in single.adapter.model.blocks)
    with pytest.raises(ValueError, match="residual"):
        nodes.EZIGenLoadEncoder.execute("res.safetensors", model, residual="triple")

"""End-to-end fixtures: one real headless ComfyUI server for the whole test session.

Starting ComfyUI takes seconds and loading a checkpoint more, so every e2e test shares one server
(and ComfyUI's model cache). Tests must vary a seed: ComfyUI answers an identical prompt from its
cache without running anything.
"""

from __future__ import annotations

import atexit
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_host import ComfyServer
from ezigen_lib.host import bootstrap_inprocess

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-EZIGen"
MODEL_CACHE = REPO / ".cache" / "models"


# The SDXL server's flags. ComfyUI runs a UNet in fp32 on the CPU: SDXL's 2.6 B parameters would take 10.3 GB on top
# of the checkpoint's 6.9 GB being read; bf16 weights (computed in fp32) halve that (measured, 0.3.75: peak RSS
# 14.7 GB with --bf16-unet, 6.9 GB of it the file's clean page cache, 8.0 GB after loading).
SDXL_SERVER_FLAGS = ("--bf16-unet",)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The SDXL server's tests first: its module-scoped server (8 GB) is stopped before the session server starts,
    so a run never holds two ComfyUI servers at once (the CI machine has room for one)."""
    items.sort(key=lambda item: "sdxl_server" not in getattr(item, "fixturenames", ()))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Make ComfyUI importable in this process (the stand-in makers use its classes).

    Runs after collection so that, in a whole-suite run, the unit tests' conftest has already chosen
    the in-process base directory (ComfyUI allows one per process); alone, a scratch one is used,
    never the ComfyUI tree.
    """
    if "folder_paths" in sys.modules:
        bootstrap_inprocess()
        return
    base = Path(tempfile.mkdtemp(prefix="ezigen-e2e-inprocess-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    bootstrap_inprocess(base)


@pytest.fixture(scope="session")
def stand_in_models() -> dict[str, Path]:
    """Random-weight SD2.1-base and SD1.5 checkpoints and an official-format EZIGen checkpoint folder,
    made once (about a minute) and cached under .cache/models; never committed."""
    import make_checkpoints  # noqa: PLC0415 - imports ComfyUI, so only once it is bootstrapped

    return make_checkpoints.make_all(MODEL_CACHE)


@pytest.fixture(scope="session")
def sd15_checkpoint(stand_in_models: dict[str, Path]) -> Path:
    return stand_in_models["sd15"]


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory, stand_in_models: dict[str, Path]) -> Iterator[ComfyServer]:
    """A running ComfyUI (CPU) with this pack installed by symlink, both stand-in checkpoints and the
    EZIGen checkpoint folder in models/ezigen (listed as checkpoint-200000/model.safetensors); the
    SD2.1, adapter and CLIP stand-ins also appear under the shipped workflows' default file names."""
    base = tmp_path_factory.mktemp("comfy-base")
    server = ComfyServer(
        base,
        custom_nodes={PACK_NAME: REPO},
        models={
            "checkpoints": [stand_in_models["sd15"], stand_in_models["sd21base"],
                            (stand_in_models["sd21base"], "v2-1_512-ema-pruned.safetensors")],
            "ezigen": [stand_in_models["ezigen"],
                       (stand_in_models["ezigen"] / "model.safetensors", "ezigen_sd21base.safetensors")],
            "clip_vision": [stand_in_models["clip_b32"], (stand_in_models["clip_b32"], "clip_vit_b32.safetensors")],
        },
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def server(comfy_server: ComfyServer) -> ComfyServer:
    """The session server with the demo subjects and edit source in its input/ folder."""
    from demo_inputs import write_second_subject_image, write_source_image, write_subject_image

    write_subject_image(comfy_server.base_dir / "input")
    write_second_subject_image(comfy_server.base_dir / "input")
    write_source_image(comfy_server.base_dir / "input")
    return comfy_server


@pytest.fixture
def seed() -> int:
    """A fresh seed per test, so no prompt is answered from ComfyUI's execution cache."""
    return random.randrange(1, 2**31)


@pytest.fixture(scope="session")
def flux_server(server: ComfyServer) -> ComfyServer:
    """The session server with FLUX-layout stand-ins under the FLUX workflow's own file names: a FLUX.1-dev
    diffusion model (UNETLoader), a CLIP-L text encoder and a 16-channel FLUX VAE (VAELoader), made once
    (about 15 s, 1.5 GB) and cached under .cache/models; never committed."""
    import make_checkpoints  # noqa: PLC0415

    made = make_checkpoints.make_flux(MODEL_CACHE)
    server.add_models("diffusion_models", [(made["flux_unet"], "flux1-dev.safetensors")])
    server.add_models("text_encoders", [(made["flux_clip_l"], "clip_l.safetensors")])
    server.add_models("vae", [(made["flux_vae"], "ae.safetensors")])
    return server


@pytest.fixture(scope="module")
def sdxl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A ComfyUI (CPU, `SDXL_SERVER_FLAGS`) of its own with a random-weight full-size SDXL checkpoint, random
    EZIGen-SDXL adapters in upstream's layout and the CLIP ViT-B/32 stand-in under the SDXL workflow's file names,
    and the demo subject in input/; made once (about a minute, 7.8 GB) and cached under .cache/models."""
    import make_checkpoints  # noqa: PLC0415
    from demo_inputs import write_subject_image  # noqa: PLC0415

    made = make_checkpoints.make_all(MODEL_CACHE, ("sdxl", "ezigen_sdxl", "clip_b32"))
    server = ComfyServer(
        tmp_path_factory.mktemp("comfy-sdxl-base"),
        custom_nodes={PACK_NAME: REPO},
        models={"checkpoints": [(made["sdxl"], "sd_xl_base_1.0.safetensors")],
                "ezigen": [(made["ezigen_sdxl"], "ezigen_sdxl.safetensors")],
                "clip_vision": [(made["clip_b32"], "clip_vit_b32.safetensors")]},
        extra_args=SDXL_SERVER_FLAGS,
    )
    with server:
        write_subject_image(server.base_dir / "input")
        yield server

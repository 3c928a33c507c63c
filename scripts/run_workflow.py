"""The main job: a real headless ComfyUI with this pack runs a workflow from workflows/ and writes an image.

    python scripts/run_workflow.py [--workflow workflows/ezigen_single_pass.json] [--models DIR]

With --models pointing at a ComfyUI models folder (checkpoints/, ezigen/, clip_vision/ ...) the real
weights named in the workflow are used. Without it, random-weight stand-ins are made on the spot
(cached in .cache/models): the pipeline runs for real, but the picture is noise.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from inprocess import REPO  # noqa: E402 - and ezigen_lib importable

from comfy_host import ComfyServer, ui_to_api, ui_workflow_errors  # noqa: E402
from demo_inputs import SUBJECT_IMAGE, write_second_subject_image, write_source_image, write_subject_image  # noqa: E402

PACK_NAME = "ComfyUI-EZIGen"
STAND_IN_WARNING = """
############################################################################################
#  NO --models GIVEN: RUNNING ON RANDOM-WEIGHT STAND-INS (made locally, never downloaded).  #
#  The pipeline is real; the picture is noise. Pass --models /path/to/ComfyUI/models.      #
############################################################################################
"""


def _extra_paths_yaml(models: Path, base: Path) -> Path:
    folders = ["checkpoints", "ezigen", "clip_vision", "vae", "diffusion_models", "text_encoders", "clip", "loras"]
    lines = ["user_models:", f"  base_path: {models}"] + [f"  {f}: {f}/" for f in folders]
    path = base / "extra_model_paths.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _use_stand_ins(prompt: dict, models: dict[str, Path]) -> None:
    names = {"CheckpointLoaderSimple": ("ckpt_name", models["sd21base"].name),
             "EZIGenLoadEncoder": ("adapter_name", f"{models['ezigen'].name}/model.safetensors"),
             "EZIGenLoadCLIPVision": ("clip_name", models["clip_b32"].name)}
    for node in prompt.values():
        if node["class_type"] in names:
            widget, name = names[node["class_type"]]
            node["inputs"][widget] = name


def _shrink(prompt: dict, size: int | None, steps: int | None) -> None:
    """Smaller and shorter runs for CPUs; the workflow's own values otherwise."""
    for node in prompt.values():
        inputs = node["inputs"]
        if size and node["class_type"] == "EmptyLatentImage":
            inputs.update(width=size, height=size)
        if size and node["class_type"] == "EZIGenEncodeSubject":
            inputs.update(resolution=size)
        if size and node["class_type"] == "EZIGenEdit":
            inputs.update(short_side=size)
        if steps and node["class_type"] in ("KSampler", "EZIGenSampler", "EZIGenEdit"):
            inputs.update(steps=steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflow", type=Path, default=REPO / "workflows" / "ezigen_single_pass.json")
    parser.add_argument("--models", type=Path, help="a ComfyUI models folder with the real weights")
    parser.add_argument("--subject", type=Path, help=f"subject image (default: a synthetic one) as {SUBJECT_IMAGE}")
    parser.add_argument("--out", type=Path, default=REPO / "test-artifacts" / "run", help="where the image goes")
    parser.add_argument("--steps", type=int, help="override the sampler's steps (stand-ins: 4)")
    parser.add_argument("--size", type=int, help="override the image and subject size (stand-ins: 64)")
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    base = Path(tempfile.mkdtemp(prefix="ezigen-run-"))
    models: dict[str, list[Path]] = {}
    extra: list[str] = []
    if args.models:
        extra = ["--extra-model-paths-config", str(_extra_paths_yaml(args.models.resolve(), base))]
    else:
        print(STAND_IN_WARNING, file=sys.stderr, flush=True)
        from ezigen_lib.host import bootstrap_inprocess
        bootstrap_inprocess(base / "inprocess")
        import make_checkpoints
        made = make_checkpoints.make_all()
        models = {"checkpoints": [made["sd21base"]], "ezigen": [made["ezigen"]], "clip_vision": [made["clip_b32"]]}
    if args.subject:
        (base / "input").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.subject, base / "input" / SUBJECT_IMAGE)
    else:
        write_subject_image(base / "input")
    write_second_subject_image(base / "input")  # the two-subject workflow's second subject
    write_source_image(base / "input")  # the edit workflows' source, unless the workflow is pointed elsewhere

    with ComfyServer(base, custom_nodes={PACK_NAME: REPO}, models=models, extra_args=extra) as server:
        info = server.object_info()
        problems = ui_workflow_errors(workflow, info)
        if problems:
            print("workflow problems:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        prompt = ui_to_api(workflow, info)
        if not args.models:
            _use_stand_ins(prompt, made)
            args.size, args.steps = args.size or 64, args.steps or 4
        _shrink(prompt, args.size, args.steps)
        images = server.output_images(server.run(prompt, timeout=3600))
        args.out.mkdir(parents=True, exist_ok=True)
        for image in images:
            target = args.out / image.name
            shutil.copyfile(image, target)
            print(target)
    shutil.rmtree(base, ignore_errors=True)
    if not args.models:
        print(STAND_IN_WARNING, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

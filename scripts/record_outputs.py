"""Record the outputs of every path of the pack on tiny random-weight models, and compare two records.

    python scripts/record_outputs.py record [--out FILE]   # default .cache/recordings/<host>.pt
    python scripts/record_outputs.py compare A.pt B.pt     # every output bit for bit; exit 1 on a difference
    python scripts/record_outputs.py check                 # record now, compare with tests/data's digests
    python scripts/record_outputs.py digests FILE          # write FILE's digests to tests/data/recorded_outputs_<host>.json

A redesign that must not change behaviour records before and after and compares. The paths: each shipped
workflow through the nodes themselves (single pass with a KSampler, the Sampler's rounds in both modes, two
regional subjects, Edit on the whole image and around the mask), a subject saved and reloaded, one training
step, the converter. The models are the unit tests' tiny ones (scripts/tiny_models.py) on the CPU, in a process
with one thread: a thread count changes the order of some sums, so the last bits (the process re-runs itself
with OMP_NUM_THREADS=1 when started otherwise). Reports are kept without their timings.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import inprocess

DIGESTS = inprocess.REPO / "tests" / "data"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def one_thread() -> None:
    """Re-run this command with one thread unless it already has one (set before torch starts)."""
    if all(os.environ.get(k) == v for k, v in ONE_THREAD.items()):
        return
    sys.exit(subprocess.call([sys.executable, *sys.argv], env={**os.environ, **ONE_THREAD}))


def without_timings(report):
    """A report with its wall-clock fields left out (they differ on every run)."""
    if isinstance(report, dict):
        return {k: without_timings(v) for k, v in report.items() if k != "seconds" and not k.endswith("_s")}
    if isinstance(report, list):
        return [without_timings(v) for v in report]
    return report


def digest(value) -> str:
    """sha256 of a tensor's dtype, shape and bytes, or of a text."""
    import torch

    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(str(value).encode())
    return h.hexdigest()


def record() -> dict:
    """Every path's outputs by name: tensors, and texts (reports, metadata)."""
    base = inprocess.start("record", cpu=True)
    import torch

    import importlib

    import tiny_models as tiny
    from safetensors.torch import save_file
    from training_data import write_training_folder

    # the library as the loaded pack imports it: the nodes' classes (a patch's, a subject's) are that copy's
    pack = tiny.load_pack()
    lib = {name: importlib.import_module(f"{pack.__name__}.ezigen_lib.{name}")
           for name in ("autostop", "checkpoint", "convert", "edit", "edit_source", "encoder", "subject_format",
                        "subject_saving")}
    node = {name: getattr(importlib.import_module(f"{pack.__name__}.nodes.{module}"), name) for module, name in (
        ("subject", "EZIGenEncodeSubject"), ("patch", "EZIGenPatchUNetAttention"), ("sampler", "EZIGenSampler"))}
    checkpoint, edit = lib["checkpoint"], lib["edit"]
    torch.manual_seed(0)
    out: dict = {}

    # the converter: a reference-format folder (the whole-UNet key names) to an adapter-only file
    state = tiny.random_adapter_state(1)
    reference = {"learnable_weights": state["learnable_weights"]}
    for k in range(len(state["learnable_weights"])):
        for name in checkpoint.REFERENCE_TENSOR_NAMES:
            reference[f"{tiny.SD_REFERENCE_PREFIXES[k]}.{name}"] = state[checkpoint.canonical_key(k, name)]
    (base / "checkpoint-1").mkdir()
    save_file(reference, str(base / "checkpoint-1" / "model.safetensors"))
    converted = base / "adapter.safetensors"
    assert lib["convert"].main([str(base / "checkpoint-1"), str(converted)]) == 0
    weights = checkpoint.load_adapter(converted)
    out.update({f"convert/{k}": v for k, v in weights.state_dict.items()})
    out["convert/metadata"] = json.dumps(weights.metadata, sort_keys=True)

    # Load EZIGen Encoder, Encode Subject, Patch UNet Attention (the start of every workflow)
    encoder = lib["encoder"].load_encoder(converted, tiny.tiny_model(0), name="adapter.safetensors")
    vae = tiny.tiny_vae()
    text = [[tiny.random_context(3), {}]]
    image = torch.rand(2, 64, 48, 3, generator=torch.Generator().manual_seed(11))
    mask = torch.zeros(64, 48)
    mask[8:56, 10:40] = 1
    with torch.inference_mode():
        subject = node["EZIGenEncodeSubject"].execute(encoder, vae, text, image, 5, 64, mask).result[0]
    out.update({f"subject/features.{k}": f for k, f in enumerate(subject.features)})

    def patch(model, subject, start=0.6, end=1.0, strength=1.0, mask=None):
        return node["EZIGenPatchUNetAttention"].execute(model, encoder, subject, strength, start, end, mask).result[0]

    positive, negative, empty = ([[tiny.random_context(s), {}]] for s in (100, 101, 102))
    model = tiny.tiny_model(7)

    # single pass: the patch under a stock KSampler (the reference's step gate over the schedule)
    for sampler in ("ddpm", "euler"):
        out[f"single_pass/{sampler}"] = tiny.sample(patch(model, subject), seed=3, steps=10, sampler=sampler)

    # the EZIGen Sampler's rounds in both modes, one subject and two with masks
    def sampler_node(name, patched, mode, **extra):
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        result = node["EZIGenSampler"].execute(
            patched, positive, negative, latent, vae, seed=4, steps=10, cfg=5.0, sampler_name="ddpm",
            scheduler="ddim_uniform", split_ratio=0.4, loops=2, min_loops=1, max_loops=2, sim_threshold=0.9,
            mode=mode, loop_negative=empty, **extra).result
        out.update({f"{name}/latent": result[0]["samples"], f"{name}/image": result[1], f"{name}/rounds": result[2],
                    f"{name}/report": json.dumps(without_timings(json.loads(result[3])), sort_keys=True)})

    with torch.inference_mode():
        sampler_node("generate_faithful", patch(model, subject), "faithful")
        sampler_node("generate_clean", patch(model, subject), "clean")
        left, right = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
        left[..., :32], right[..., 32:] = 1, 1
        other = node["EZIGenEncodeSubject"].execute(encoder, vae, text, image.flip(1), 6, 64).result[0]
        two = patch(patch(model, subject, mask=left), other, mask=right, strength=0.8)
        sampler_node("two_subjects", two, "faithful")

    # a saved subject reloaded, used again
    lib["subject_saving"].save_subject(base / "subject.safetensors", subject, "a thing")
    reloaded, metadata = lib["subject_format"].load_subject(base / "subject.safetensors")
    out.update({f"reloaded/features.{k}": f for k, f in enumerate(reloaded.features)})
    out["reloaded/metadata"] = json.dumps(metadata, sort_keys=True)
    out["reloaded/single_pass"] = tiny.sample(patch(model, reloaded), seed=3, steps=10, sampler="ddpm")

    # EZIGen Edit: the whole image (a small source) and around the mask (a larger one, the subject placed by a
    # mask that the crop cuts to the box): faithful, clean with a hard mask, the reference's output
    small = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(4))
    small_mask = torch.zeros(50, 70)
    small_mask[10:30, 20:50] = 1
    small_mask[8:10, 20:50] = 0.5
    large = torch.rand(1, 120, 200, 3, generator=torch.Generator().manual_seed(5))
    large_mask = torch.zeros(120, 200)
    large_mask[38:60, 110:140] = 1
    large_mask[36:38, 110:140] = 0.5
    cases = {"whole_faithful": {"crop": "whole image"}, "whole_clean": {"crop": "whole image", "mode": "clean"},
             "crop_faithful": {}, "crop_clean_hard": {"mode": "clean", "mask_mode": "hard"},
             "crop_reference": {"mode": "reference", "output_size": "reference"},
             # three rounds: rounds 2 and 3 start from the inversion of the round before
             "whole_faithful_3_rounds": {"crop": "whole image", "loops": 3},
             "crop_clean_3_rounds": {"mode": "clean", "loops": 3}}
    for name, extra in cases.items():
        extra = dict(extra)
        settings = edit.EditSettings(seed=1, steps=10, short_side=64, sampler_name="euler",
                                     policy=lib["autostop"].LoopPolicy(loops=extra.pop("loops", 1)), **extra)
        whole = name.startswith("whole")
        patched = patch(model, subject, 0.0, mask=None if whole else right)
        with torch.inference_mode():
            source = lib["edit_source"].edit_source(small if whole else large, small_mask if whole else large_mask)
            result = edit.run_edit(patched, tiny.random_context(5), vae, source, positive, negative, settings)
        out.update({f"edit_{name}/image": result.image,
                    f"edit_{name}/report": json.dumps(without_timings(result.report), sort_keys=True)})
        if name != "crop_reference":  # its rounds (512 px, the reference's size) differ in the last bit between
            out[f"edit_{name}/rounds"] = result.round_images  # processes: measured, 5107 of 2.2 M values by 3e-8

    # one training step
    trainer = tiny.tiny_trainer(write_training_folder(base / "data"), base / "train", steps=1, batch_size=2)
    out["train/loss"] = torch.tensor(trainer.train_step(next(trainer.batches())))
    out.update({f"train/{k}": v for k, v in trainer.weights().state_dict.items()})
    return out


def digests(outputs: dict) -> dict[str, str]:
    return {name: digest(value) for name, value in sorted(outputs.items())}


def compare(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The names whose digest differs, or that only one side has."""
    return [f"{name}: {'missing' if name not in after else 'new' if name not in before else 'differs'}"
            for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def host() -> str:
    from ezigen_lib.host import comfy_version

    return ".".join(map(str, comfy_version()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--out", type=Path)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    sub.add_parser("check")
    dig = sub.add_parser("digests")
    dig.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command in ("record", "check"):
        one_thread()
    import torch

    if args.command == "compare":
        differences = compare(digests(torch.load(args.before)), digests(torch.load(args.after)))
    elif args.command == "digests":
        target = DIGESTS / f"recorded_outputs_{host()}.json"
        target.write_text(json.dumps(digests(torch.load(args.file)), indent=1, sort_keys=True) + "\n")
        print(f"wrote {target}")
        return 0
    else:
        outputs = record()
        if args.command == "record":
            out = args.out or inprocess.REPO / ".cache" / "recordings" / f"{host()}.pt"
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(outputs, out)
            print(f"recorded {len(outputs)} outputs in {out}")
            return 0
        recorded = json.loads((DIGESTS / f"recorded_outputs_{host()}.json").read_text())
        differences = compare(recorded, digests(outputs))
    for line in differences:
        print(line)
    print(f"{len(differences)} of the outputs differ" if differences else "all outputs bit-identical")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())

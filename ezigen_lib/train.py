"""Train EZIGen adapters for an SD1.x, SD2.x or SDXL checkpoint.

    python -m ezigen_lib.train --checkpoint sd15.safetensors --data my_pairs/ --out runs/sd15 [--steps 20000]
    python -m ezigen_lib.train --checkpoint sd_xl_base_1.0.safetensors --data my_pairs/ --out runs/sdxl \
        --batch-size 2 --mixed-precision fp16 --staged-timesteps      (upstream's SDXL run, doc A5)
    torchrun --nproc-per-node 8 -m ezigen_lib.train ...      (several GPUs or machines, same flags)

The base checkpoint is the single file ComfyUI loads; its UNet, VAE and text encoder stay frozen. The
result, `OUT/ezigen_adapter.safetensors`, goes in ComfyUI/models/ezigen for Load EZIGen Encoder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .host import bootstrap_inprocess
from .text_encoding import LAYERS

RESIDUALS = ("double", "single")  # adapter.RESIDUALS (which imports ComfyUI, not yet bootstrapped here)

FAMILY_NAMES = {"SD15": "sd1.5", "SD20": "sd2.x", "SD21UnclipL": "sd2.1-unclip", "SD21UnclipH": "sd2.1-unclip",
                "SDXL": "sdxl"}
FINAL_TEXT_FAMILIES = ("SDXL",)  # upstream trained these on final-layer text features (text_encoding "final")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ezigen_lib.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="single-file SD1.x/SD2.x/SDXL checkpoint")
    p.add_argument("--data", type=Path, help="folder with manifest.jsonl (see ezigen_lib/training/data.py)")
    p.add_argument("--coco", type=Path, help="COCO 2014 root (annotations/, train2014/, val2014/)")
    p.add_argument("--ytvis", type=Path, help="YouTube-VIS 2019 train folder (holding JPEGImages/)")
    p.add_argument("--ytvis-annotations", type=Path, help="its instances JSON (default: YTVIS/../train.json)")
    p.add_argument("--limit-per-source", type=int, default=100_000, help="examples per source (reference: 100k)")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, final adapter)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--resolution", type=int, help="square training size (default: the family's, SDXL 1024, else 512)")
    p.add_argument("--seed", type=int, default=3154)
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0 = only at the end)")
    p.add_argument("--subject-dropout", type=float, default=0.2, help="share of steps without subject features")
    p.add_argument("--faithful-dropout", action="store_true", help="the reference's 80%% subject dropout")
    p.add_argument("--faithful-padding", action="store_true",
                   help="the reference's 4 subject slots per example, empty ones grey images that are attended")
    p.add_argument("--text-dropout", type=float, default=0.0, help="share of captions replaced by '' (for CFG)")
    p.add_argument("--staged-timesteps", action="store_true",
                   help="upstream's SDXL schedule: COCO/YouTube-VIS examples at t 333..999, --data ones at t 0..665")
    p.add_argument("--residual", choices=RESIDUALS,
                   help="adapter output h1+O (single) or h1+u+O (double); default the family's (SDXL single, else double)")
    p.add_argument("--text-layers", choices=LAYERS,
                   help="text features: ComfyUI's usual (comfy) or every tower's final layer after its LayerNorm "
                        "(final, as upstream trained SDXL); default final for SDXL, comfy otherwise")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute adapter attention in backward")
    p.add_argument("--head-dim", type=int, default=64, help="adapter attention head width (SD2.1 layout: 64)")
    p.add_argument("--resume", type=Path, help="a checkpoint-N folder, or OUT/latest")
    p.add_argument("--reference-folder", action="store_true", help="also write the reference's model.safetensors layout")
    p.add_argument("--tensorboard", type=Path, help="write TensorBoard logs here (needs `pip install tensorboard`)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    return p.parse_args(argv)


class UsageError(Exception):
    """A bad command line or input: printed as `error: ...` with exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bootstrap_inprocess(cpu=True if args.cpu else None)  # the GPU when there is one, unless --cpu
    import comfy.model_management
    import comfy.sd

    from .family import family_of, model_family_name
    from .training.trainer import Trainer, distributed_from_env

    distributed_from_env()
    try:
        dataset = training_dataset(args)
        if not args.checkpoint.is_file():
            raise UsageError(f"checkpoint {args.checkpoint} not found (a single-file SD1.x/SD2.x/SDXL .safetensors, "
                             "the file ComfyUI/models/checkpoints holds)")
        model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(args.checkpoint),
                                                                     model_options=unet_options(args))
        if clip is None or vae is None:
            raise UsageError(f"checkpoint {args.checkpoint} holds no {'text encoder' if clip is None else 'VAE'}: "
                             "give the full single-file checkpoint (UNet, CLIP and VAE in one file)")
        family = model_family_name(model)
        set_resolution(dataset, args.resolution or family_of(model).native_resolution)
        settings = train_settings(args, family)
        try:
            trainer = Trainer(model, vae, text_encoder(clip, settings.text_layers), dataset, args.out, settings,
                              device=comfy.model_management.get_torch_device())
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        if args.resume:
            trainer.resume(args.resume)
        log, close = progress_logger(args, trainer, settings.steps)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = trainer.run(log)
    close()
    if args.reference_folder:
        trainer.export_reference_folder(args.out / "reference-checkpoint")
    if trainer.rank == 0:
        print(out)
    return 0


def training_dataset(args: argparse.Namespace):
    """The training pairs of every source given (a folder with manifest.jsonl, COCO, YouTube-VIS)."""
    import torch

    from .training.data import FolderDataset, TrainingDataError
    from .training.reference_data import CocoPairs, YtvisPairs

    if args.resolution is not None and args.resolution < 8:
        raise UsageError(f"--resolution {args.resolution}: give the square training size in pixels, e.g. 512 or 1024")
    if not (args.data or args.coco or args.ytvis):
        raise UsageError("give training data: --data FOLDER (manifest.jsonl), --coco ROOT and/or --ytvis ROOT")
    try:
        sources = []
        resolution = args.resolution or 512  # set_resolution gives the family's once the checkpoint is read
        if args.data:
            sources.append(FolderDataset(args.data, resolution))
        if args.coco:
            sources.append(CocoPairs(args.coco, resolution, limit=args.limit_per_source))
        if args.ytvis:
            annotations = args.ytvis_annotations or args.ytvis.parent / "train.json"
            sources.append(YtvisPairs(args.ytvis, annotations, resolution, limit=args.limit_per_source,
                                      seed=args.seed))
    except TrainingDataError as exc:
        raise UsageError(str(exc)) from exc
    return sources[0] if len(sources) == 1 else torch.utils.data.ConcatDataset(sources)


def unet_options(args: argparse.Namespace) -> dict:
    """Without mixed precision the frozen UNet is loaded in fp32: the trainer calls it outside ComfyUI's
    sampling, which would cast the inputs to the half precision ComfyUI picks on a GPU (on a CPU it is fp32
    anyway). With fp16/bf16 ComfyUI's choice stands and autocast does the casting."""
    import torch

    return {"dtype": torch.float32} if args.mixed_precision == "no" else {}


def set_resolution(dataset, resolution: int) -> None:
    """Every source of `dataset` makes its pictures `resolution` square (they read it per example)."""
    for source in getattr(dataset, "datasets", [dataset]):
        source.resolution = resolution


def default_text_layers(family: str) -> str:
    """The text features a family's adapters are trained on by default: upstream's for SDXL (final layers),
    ComfyUI's usual for the rest (what the SD2.1 release and this trainer always used)."""
    return "final" if family in FINAL_TEXT_FAMILIES else "comfy"


def train_settings(args: argparse.Namespace, family: str):
    from .training.trainer import TrainSettings

    text_layers = args.text_layers or default_text_layers(family)
    return TrainSettings(
        residual=args.residual, staged_timesteps=args.staged_timesteps, text_layers=text_layers,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
        subject_dropout=args.subject_dropout, faithful=args.faithful_dropout, text_dropout=args.text_dropout,
        faithful_padding=args.faithful_padding,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        save_every=args.save_every, head_dim=args.head_dim, base_model=FAMILY_NAMES.get(family, family),
        data_name="+".join(str(p.name) for p in (args.data, args.coco, args.ytvis) if p))


def text_encoder(clip, layers: str = "comfy"):
    """The checkpoint's frozen text encoder as the trainer calls it: captions -> (context (B, 77, D), pooled)."""
    from .text_encoding import encode_prompts

    def encode_text(captions: list[str]):
        return encode_prompts(clip, captions, layers)

    return encode_text


def progress_logger(args: argparse.Namespace, trainer, steps: int):
    """(log(step, loss, samples_per_s), close()): a progress bar on rank 0, and TensorBoard if asked."""
    from tqdm import tqdm

    from .training.trainer import peak_memory_mb

    writer = None
    if args.tensorboard and trainer.rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
        writer = SummaryWriter(str(args.tensorboard))
    bar = tqdm(total=steps, initial=trainer.step, disable=trainer.rank != 0, desc="EZIGen training")

    def log(step: int, loss: float, samples_per_s: float) -> None:
        peak = peak_memory_mb(trainer.device)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{samples_per_s:.2f}", peak_mib=f"{peak:.0f}")
        if writer is not None:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/samples_per_s", samples_per_s, step)
            writer.add_scalar("train/peak_memory_mib", peak, step)

    return log, bar.close


if __name__ == "__main__":
    sys.exit(main())

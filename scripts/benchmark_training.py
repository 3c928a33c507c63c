"""Benchmark: EZIGen training throughput (samples/s) and peak memory for a base checkpoint and resolution.

    python scripts/benchmark_training.py [--checkpoint FILE] [--resolution 512] [--steps 5] [--batch-size 1]

Without --checkpoint the random-weight SD1.5 and SD2.1-base stand-ins are measured (speed and memory
do not depend on the weights). An SDXL checkpoint is trained as `python -m ezigen_lib.train` trains it
(70 adapters, single residual, final-layer text, 1024 px unless --resolution). Peak memory is CUDA's max
allocated on a GPU, the process's peak RSS on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import inprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, action="append")
    parser.add_argument("--resolution", type=int, help="default: the checkpoint family's (SDXL 1024, else 512)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)

    base = inprocess.start("train-bench")  # also the training folder and the trainer's output
    import comfy.model_management
    import comfy.sd

    from ezigen_lib.family import family_of, model_family_name
    from ezigen_lib.train import default_text_layers, text_encoder
    from ezigen_lib.training.data import FolderDataset
    from ezigen_lib.training.trainer import Trainer, TrainSettings, peak_memory_mb
    from training_data import write_training_folder

    if not args.checkpoint:
        made = inprocess.stand_ins(("sd15", "sd21base"), "speed and memory")
        args.checkpoint = [made["sd15"], made["sd21base"]]
    data = write_training_folder(base / "data", count=max(4, args.batch_size))
    device = comfy.model_management.get_torch_device()
    print(f"device: {device}, batch {args.batch_size}, "
          f"mixed precision {args.mixed_precision}, gradient checkpointing {args.gradient_checkpointing}")
    for checkpoint in args.checkpoint:
        model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(checkpoint))
        family = model_family_name(model)
        resolution = args.resolution or family_of(model).native_resolution
        settings = TrainSettings(steps=args.steps + 1, batch_size=args.batch_size, save_every=0,
                                 mixed_precision=args.mixed_precision,
                                 gradient_checkpointing=args.gradient_checkpointing,
                                 text_layers=default_text_layers(family))
        trainer = Trainer(model, vae, text_encoder(clip, settings.text_layers), FolderDataset(data, resolution),
                          base / "out", settings, device)
        batches = trainer.batches()
        trainer.train_step(next(batches))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(next(batches))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        print(f"{checkpoint.name} ({family}, {len(trainer.adapters.blocks)} adapters, {trainer.info.residual} residual, "
              f"{resolution} px): {args.steps * args.batch_size / seconds:.3f} samples/s, "
              f"{seconds / args.steps:.2f} s/step, peak memory {peak_memory_mb(device):.0f} MiB")
        del trainer, model, clip, vae
    return 0


if __name__ == "__main__":
    sys.exit(main())

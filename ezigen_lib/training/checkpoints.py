"""A training run's files: the exported adapter (ours and the reference's layout), and the checkpoints it
saves and resumes from. Each function takes the `Trainer` whose state it writes or restores."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ..checkpoint import REFERENCE_TENSOR_NAMES, load_adapter, reference_key, save_adapter

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"
ADAPTER_FILE = "adapter.safetensors"


def export(trainer, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """The trained adapter file (our format), with the run's steps, data and settings in its metadata, and the
    family and residual it was trained for (weights cannot tell the residual)."""
    meta = {"family": trainer.info.family, "residual": trainer.info.residual,
            "training_steps": str(trainer.step), "training_data": trainer.settings.data_name,
            "training_settings": json.dumps({k: v for k, v in asdict(trainer.settings).items() if k != "extra"})}
    if trainer.rank == 0:
        save_adapter(trainer.weights(), path, dtype, extra_metadata=meta)
    return path


def export_reference_folder(trainer, folder: Path) -> Path:
    """The reference's accelerate-style layout (model.safetensors with its key names)."""
    state = trainer.weights().state_dict
    reference = {"learnable_weights": state["learnable_weights"]}
    for layer in trainer.family.layers:
        for ref_name, ours in REFERENCE_TENSOR_NAMES.items():
            reference[reference_key(layer.reference_prefix, ref_name)] = state[f"blocks.{layer.index}.{ours}"]
    folder.mkdir(parents=True, exist_ok=True)
    if trainer.rank == 0:
        save_file({k: v.contiguous() for k, v in reference.items()}, str(folder / "model.safetensors"))
    return folder


def save_checkpoint(trainer) -> Path:
    """checkpoint-<step>/: the adapter in fp32 and the optimizer, scaler and random states to resume from."""
    folder = trainer.out_dir / f"{CHECKPOINT_PREFIX}{trainer.step}"
    if trainer.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        save_adapter(trainer.weights(), folder / ADAPTER_FILE, torch.float32)
        torch.save({"step": trainer.step, "optimizer": trainer.optimizer.state_dict(),
                    "scaler": trainer.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "python_rng": trainer.rng.getstate()},
                   folder / STATE_FILE)
    if trainer.world > 1:
        dist.barrier()
    return folder


def resume(trainer, folder: str | Path) -> None:
    """Continue `trainer` from a checkpoint folder (or `<out>/latest`, the newest one)."""
    folder = Path(folder)
    if folder.name == "latest":
        found = sorted(folder.parent.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
        if not found:
            raise FileNotFoundError(f"no {CHECKPOINT_PREFIX}N folder in {folder.parent} to resume from")
        folder = found[-1]
    weights = load_adapter(folder / ADAPTER_FILE)
    trainer.adapters.load_state_dict({k: v.to(trainer.device) for k, v in weights.state_dict.items()})
    state = torch.load(folder / STATE_FILE, map_location=trainer.device, weights_only=True)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.step = int(state["step"])
    torch.set_rng_state(state["torch_rng"].cpu())
    trainer.rng.setstate(_as_random_state(state["python_rng"]))


def _as_random_state(state):
    """random.setstate wants tuples; a round trip through torch.save may hand back lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def checkpoint_steps(out_dir: Path) -> list[int]:
    """The steps of the checkpoints saved in `out_dir`, in order."""
    return sorted(int(p.name[len(CHECKPOINT_PREFIX):]) for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*"))

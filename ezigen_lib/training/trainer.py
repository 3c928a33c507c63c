"""The training loop: frozen UNet + VAE + text encoder, trainable adapters, noise-prediction loss.

One step, as the reference (docs/method.md section 15) with its bugs fixed by default:
1. the subject is VAE-encoded, noised to t = 1 and run through the frozen UNet (no grad), recording
   the norm1 feature of every transformer layer with the same capture_features the Encode Subject node uses;
2. with probability `subject_dropout` the features are zeroed for the step (reference: 0.8 by its
   inverted comparison; ours 0.2 as its config says; `faithful=True` restores 0.8);
3. the target is noised at a random t and the UNet predicts the noise (or v) with the adapters on
   in every block, through the same AdapterSet maths the Patch UNet Attention node runs;
4. MSE, backward, clip to 1.0, AdamW step. Only adapter parameters train.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ..adapter import AdapterSet
from ..checkpoint import AdapterInfo, AdapterWeights
from ..family import RESIDUALS, family_of
from . import checkpoints
from .data import collate
from .objective import Objective, TextFeatures, init_adapters_from_unet


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 3154
    subject_dropout: float = 0.2
    text_dropout: float = 0.0
    faithful: bool = False  # the reference's 80 % subject dropout
    faithful_padding: bool = False  # the reference's 4 subject slots, empty ones grey images that are attended
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    save_every: int = 500
    head_dim: int = 64
    residual: str | None = None  # family.RESIDUALS; None: the family's (SDXL single, SD1.x/SD2.x double)
    staged_timesteps: bool = False  # each example's own timestep range (upstream's SDXL run, data.py)
    text_layers: str = "comfy"  # text_encoding.LAYERS the run's text encoder uses (recorded, not applied here)
    base_model: str = "sd2.1-base"
    data_name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def effective_subject_dropout(self) -> float:
        return 0.8 if self.faithful else self.subject_dropout


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Trains adapters for `model` (a ComfyUI ModelPatcher of an SD1.x/SD2.x/SDXL checkpoint): the optimizer,
    the data order and the run; the loss is `objective`'s, the files `checkpoints`'.

    `encode_text(captions)` is the checkpoint's frozen text encoder: the context (B, 77, D), or (context, pooled)
    for a UNet that takes added conditioning (SDXL).
    """

    def __init__(self, model, vae, encode_text: Callable[[list[str]], TextFeatures], dataset, out_dir: str | Path,
                 settings: TrainSettings, device: torch.device | str = "cpu"):
        self.model, self.vae, self.dataset = model, vae, dataset
        self.out_dir, self.settings, self.device = Path(out_dir), settings, torch.device(device)
        self.rank, self.world = _world()
        unet = model.model.diffusion_model.to(self.device).requires_grad_(False).eval()
        self.family = family_of(model)
        residual = settings.residual or self.family.facts.residual
        if residual not in RESIDUALS:
            raise ValueError(f"residual {residual!r}: expected one of {', '.join(RESIDUALS)}")
        self.info = AdapterInfo(widths=self.family.widths, head_dim=settings.head_dim, base_model=settings.base_model,
                                source="ezigen_lib.train", family=self.family.name, residual=residual)
        self.adapters = AdapterSet(self.family.widths, settings.head_dim, dtype=torch.float32, device=self.device,
                                   residual=residual)
        init_adapters_from_unet(self.adapters, unet)
        self.optimizer = torch.optim.AdamW(self.adapters.parameters(), lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=settings.mixed_precision == "fp16" and self.device.type == "cuda")
        self.step = 0
        self.rng = random.Random(settings.seed + self.rank)
        self.objective = Objective(model.model, vae, encode_text, self.family, self.adapters, settings, self.device,
                                   self.rng)
        torch.manual_seed(settings.seed + self.rank)

    def train_step(self, batch: dict) -> float:
        self.adapters.train()
        loss = self.objective.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.world > 1:  # average gradients across processes (torchrun)
            for p in self.adapters.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.adapters.parameters(), self.settings.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(loss.detach())

    # -- the run ---------------------------------------------------------------------------------
    def batches(self, skip: int = 0):
        """Endless shuffled batches of this process's share of the data, seeded per epoch, starting after
        `skip` batches (a resumed run continues the data order where it stopped, loading nothing twice)."""
        size = self.settings.batch_size
        per_epoch = len(range(self.rank, len(self.dataset), self.world)) // size
        epoch, offset = divmod(skip, per_epoch)
        while True:
            order = list(range(len(self.dataset)))
            random.Random(self.settings.seed + epoch).shuffle(order)
            mine = order[self.rank::self.world]
            for i in range(offset, per_epoch):
                yield collate([self.dataset[j] for j in mine[i * size:(i + 1) * size]])
            epoch, offset = epoch + 1, 0

    def run(self, log: Callable[[int, float, float], None] | None = None) -> Path:
        s = self.settings
        if len(self.dataset) < s.batch_size * self.world:
            raise ValueError(f"{len(self.dataset)} examples cannot fill a batch of {s.batch_size} on {self.world} "
                             "process(es)")
        batches = self.batches(skip=self.step)
        started, seen = time.perf_counter(), 0
        while self.step < s.steps:
            loss = self.train_step(next(batches))
            seen += s.batch_size * self.world
            if log is not None:
                log(self.step, loss, seen / max(time.perf_counter() - started, 1e-9))
            if s.save_every and self.step % s.save_every == 0 and self.step < s.steps:
                self.save_checkpoint()
        self.save_checkpoint()
        return self.export(self.out_dir / "ezigen_adapter.safetensors")

    # -- files (checkpoints.py) -------------------------------------------------------------------
    def weights(self) -> AdapterWeights:
        state = {k: v.detach().cpu() for k, v in self.adapters.state_dict().items()}
        return AdapterWeights(state_dict=state, info=self.info)

    def export(self, path: Path, dtype: torch.dtype = torch.float16) -> Path:
        return checkpoints.export(self, path, dtype)

    def export_reference_folder(self, folder: Path) -> Path:
        return checkpoints.export_reference_folder(self, folder)

    def save_checkpoint(self) -> Path:
        return checkpoints.save_checkpoint(self)

    def resume(self, folder: str | Path) -> None:
        checkpoints.resume(self, folder)


def distributed_from_env() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory so far: CUDA's max allocated on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

"""The training loop: frozen UNet + VAE + text encoder, trainable adapters, noise-prediction loss.

One step, as the reference (docs/method.md section 15) with its bugs fixed by default:
1. the subject is VAE-encoded, noised to t = 1 and run through the frozen UNet (no grad), recording
   the 16 norm1 features with the same capture_features the Encode Subject node uses;
2. with probability `subject_dropout` the features are zeroed for the step (reference: 0.8 by its
   inverted comparison; ours 0.2 as its config says; `faithful=True` restores 0.8);
3. the target is noised at a random t and the UNet predicts the noise (or v) with the adapters on
   in every block, through the same AdapterSet maths the Patch UNet Attention node runs;
4. MSE, backward, clip to 1.0, AdamW step. Only adapter parameters train.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file

import comfy.model_base

from ..adapter import AdapterSet
from ..capture import capture_features
from ..checkpoint import REFERENCE_TENSOR_NAMES, AdapterInfo, AdapterWeights, reference_key, save_adapter
from ..core import require_model_sampling
from ..family import Family, family_of, layer_modules
from .data import MAX_SUBJECTS, collate

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"
ADAPTER_FILE = "adapter.safetensors"


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
    base_model: str = "sd2.1-base"
    data_name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def effective_subject_dropout(self) -> float:
        return 0.8 if self.faithful else self.subject_dropout


class TrainingInjection:
    """middle_patch for training: each example's own subject tokens, adapters always on, no caching.

    `features[k]` is a list with one (1, M_i, C) tensor per example. Examples with different numbers
    of subjects attend only to their own tokens (the padding mask the reference computes but never
    applies), so no padded slot is ever attended.
    """

    def __init__(self, family: Family, adapters: AdapterSet, features: list[list[torch.Tensor]],
                 checkpointing: bool):
        self.family, self.adapters, self.features, self.checkpointing = family, adapters, features, checkpointing

    def __call__(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor:
        slot = self.family.layer_at(extra_options, "which adapter a block trains").index
        per_example = self.features[slot]
        same_length = len({f.shape[1] for f in per_example}) == 1
        groups = [(slice(None), torch.cat(per_example))] if same_length else \
            [(slice(i, i + 1), f) for i, f in enumerate(per_example)]
        precision = extra_options.get("attn_precision")

        def residual(h, subject):
            k, v = self.adapters.subject_kv(slot, subject.to(h.dtype))
            return self.adapters.blocks[slot].residual(h, k, v, attn_precision=precision)

        out = []
        for rows, subject in groups:
            h = x[rows]
            if self.checkpointing and torch.is_grad_enabled():
                out.append(torch.utils.checkpoint.checkpoint(residual, h, subject, use_reentrant=False))
            else:
                out.append(residual(h, subject))
        return x + torch.cat(out)


def init_adapters_from_unet(adapters: AdapterSet, unet) -> None:
    """The reference's initialisation: each adapter copies its layer's attn1 and norm1 (no zero-init)."""
    with torch.no_grad():
        for adapter, block in zip(adapters.blocks, layer_modules(unet)):
            for name in ("to_q", "to_k", "to_v"):
                getattr(adapter, name).weight.copy_(getattr(block.attn1, name).weight)
            adapter.to_out[0].weight.copy_(block.attn1.to_out[0].weight)
            adapter.to_out[0].bias.copy_(block.attn1.to_out[0].bias)
            adapter.norm.weight.copy_(block.norm1.weight)
            adapter.norm.bias.copy_(block.norm1.bias)
        adapters.learnable_weights.fill_(1.0)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Trains adapters for `model` (a ComfyUI ModelPatcher of an SD1.x/SD2.x checkpoint).

    `encode_text(captions) -> (B, 77, D)` is the checkpoint's frozen text encoder.
    """

    def __init__(self, model, vae, encode_text: Callable[[list[str]], torch.Tensor], dataset, out_dir: str | Path,
                 settings: TrainSettings, device: torch.device | str = "cpu"):
        self.model, self.vae, self.encode_text, self.dataset = model, vae, encode_text, dataset
        self.out_dir, self.settings, self.device = Path(out_dir), settings, torch.device(device)
        self.rank, self.world = _world()
        self.base = model.model
        self.unet = self.base.diffusion_model.to(self.device).requires_grad_(False).eval()
        self.family = family_of(model)
        self.info = AdapterInfo(widths=self.family.widths, head_dim=settings.head_dim, base_model=settings.base_model,
                                source="ezigen_lib.train")
        self.adapters = AdapterSet(self.family.widths, settings.head_dim, dtype=torch.float32, device=self.device)
        init_adapters_from_unet(self.adapters, self.unet)
        self.optimizer = torch.optim.AdamW(self.adapters.parameters(), lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=settings.mixed_precision == "fp16" and self.device.type == "cuda")
        self.step = 0
        model_sampling = require_model_sampling(self.base.model_sampling, "sigmas",
                                                purpose="the training noise levels (alphas_cumprod)")
        sigmas = model_sampling.sigmas.float().cpu()
        self.alphas_cumprod = (1.0 / (1.0 + sigmas ** 2)).to(self.device)
        self.v_prediction = self.base.model_type == comfy.model_base.ModelType.V_PREDICTION
        self.rng = random.Random(settings.seed + self.rank)
        torch.manual_seed(settings.seed + self.rank)

    # -- one step --------------------------------------------------------------------------------
    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.base.process_latent_in(self.vae.encode(pixels).float()).to(self.device)

    def _noised(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * z + (1 - a).sqrt() * eps

    def _unet(self, x, t, context, patch_name: str, patch) -> torch.Tensor:
        options = {"patches": {patch_name: [patch]}}
        return self.unet(x, t.float(), context=context, transformer_options=options)

    def subject_features(self, subject_sets: list[torch.Tensor], caption_sets: list[list[str]]) -> list[list[torch.Tensor]]:
        """Per slot, one (1, n_i * HW, C) tensor per example: its subjects at t = 1, tokens concatenated."""
        if self.settings.faithful_padding:  # grey images in the empty slots, as the reference pads them
            subject_sets = [torch.cat([s, torch.full((MAX_SUBJECTS - len(s), *s.shape[1:]), 0.5)]) for s in subject_sets]
            caption_sets = [c + [""] * (MAX_SUBJECTS - len(c)) for c in caption_sets]
        z_s = self._latents(torch.cat(subject_sets))
        with torch.no_grad():
            context = self.encode_text([c for captions in caption_sets for c in captions]).to(self.device)
        return self.features_from_latents(z_s, torch.randn_like(z_s), context, [len(s) for s in subject_sets])

    def features_from_latents(self, latent: torch.Tensor, noise: torch.Tensor, context: torch.Tensor,
                              counts: list[int]) -> list[list[torch.Tensor]]:
        """subject_features after the VAE, text encoder and noise draw (clean latents in model space, one
        context row per subject image), public so a test can give it and Encode Subject the same inputs."""
        features = capture_features(self.base, latent, noise, context, self.device, self.device, torch.float32)
        return [[f.reshape(1, -1, f.shape[-1]) for f in features[k].split(counts)] for k in range(len(self.family.layers))]

    def loss(self, batch: dict) -> torch.Tensor:
        s = self.settings
        z_t = self._latents(batch["target"])
        batch_size = z_t.shape[0]
        captions = [("" if self.rng.random() < s.text_dropout else c) for c in batch["caption"]]
        with torch.no_grad():
            context = self.encode_text(captions).to(self.device)
        features = self.subject_features(batch["subjects"], batch["subject_captions"])
        if self.rng.random() < s.effective_subject_dropout:
            features = [[torch.zeros_like(f) for f in slot] for slot in features]
        t = torch.randint(0, len(self.alphas_cumprod), (batch_size,), device=self.device)
        eps = torch.randn_like(z_t)
        noisy = self._noised(z_t, t, eps)
        injection = TrainingInjection(self.family, self.adapters, features, s.gradient_checkpointing)
        with self._autocast():
            prediction = self._unet(noisy, t, context, "middle_patch", injection)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        target = a.sqrt() * eps - (1 - a).sqrt() * z_t if self.v_prediction else eps
        return F.mse_loss(prediction.float(), target)

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.settings.mixed_precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def train_step(self, batch: dict) -> float:
        self.adapters.train()
        loss = self.loss(batch)
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

    # -- checkpoints -----------------------------------------------------------------------------
    def weights(self) -> AdapterWeights:
        state = {k: v.detach().cpu() for k, v in self.adapters.state_dict().items()}
        return AdapterWeights(state_dict=state, info=self.info)

    def export(self, path: Path, dtype: torch.dtype = torch.float16) -> Path:
        meta = {"training_steps": str(self.step), "training_data": self.settings.data_name,
                "training_settings": json.dumps({k: v for k, v in asdict(self.settings).items() if k != "extra"})}
        if self.rank == 0:
            save_adapter(self.weights(), path, dtype, extra_metadata=meta)
        return path

    def export_reference_folder(self, folder: Path) -> Path:
        """The reference's accelerate-style layout (model.safetensors with its key names)."""
        state = self.weights().state_dict
        reference = {"learnable_weights": state["learnable_weights"]}
        for layer in self.family.layers:
            for ref_name, ours in REFERENCE_TENSOR_NAMES.items():
                reference[reference_key(layer.reference_prefix, ref_name)] = state[f"blocks.{layer.index}.{ours}"]
        folder.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            save_file({k: v.contiguous() for k, v in reference.items()}, str(folder / "model.safetensors"))
        return folder

    def save_checkpoint(self) -> Path:
        folder = self.out_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        if self.rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            save_adapter(self.weights(), folder / ADAPTER_FILE, torch.float32)
            torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "python_rng": self.rng.getstate()},
                       folder / STATE_FILE)
        if self.world > 1:
            dist.barrier()
        return folder

    def resume(self, folder: str | Path) -> None:
        from ..checkpoint import load_adapter

        folder = Path(folder)
        if folder.name == "latest":
            found = sorted(folder.parent.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
            if not found:
                raise FileNotFoundError(f"no {CHECKPOINT_PREFIX}N folder in {folder.parent} to resume from")
            folder = found[-1]
        weights = load_adapter(folder / ADAPTER_FILE)
        self.adapters.load_state_dict({k: v.to(self.device) for k, v in weights.state_dict.items()})
        state = torch.load(folder / STATE_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.rng.setstate(_as_random_state(state["python_rng"]))


def _as_random_state(state):
    """random.setstate wants tuples; a round trip through torch.save may hand back lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def checkpoint_steps(out_dir: Path) -> list[int]:
    return sorted(int(p.name[len(CHECKPOINT_PREFIX):]) for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*"))


def distributed_from_env() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

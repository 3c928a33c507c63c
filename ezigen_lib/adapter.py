"""The EZIGen adapter: one extra attention per transformer block whose keys/values are the
block's own tokens followed by the subject's tokens.

Per transformer layer k of the model's family (family.py), with h1 the block state after self-attention:
    u  = LN_a(h1)
    s  = learnable_weights[k] * S_k                  (subject features of layer k)
    O  = W_o MHA(q = W_q u, k = W_k [u; s], v = W_v [u; s]) + b_o
    h1' = h1 + strength * (u + O)                    (double residual: SD2.1's release)
    h1' = h1 + strength * O                          (single residual: upstream's SDXL run)
Weights cannot tell the two apart (upstream's ``residual_connection``), so the file or the user says which
(``family.RESIDUALS``).
Built from ComfyUI's cast-on-the-fly ops so weights stay in file dtype and any compute dtype works.
"""
from __future__ import annotations

import torch
from torch import nn

import comfy.ldm.modules.attention as comfy_attention
import comfy.ops

from .family import RESIDUALS


class BlockAdapter(nn.Module):
    def __init__(self, width: int, head_dim: int, dtype=None, device=None, operations=comfy.ops.manual_cast,
                 residual: str = "double"):
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, not {residual!r}")
        self.double_residual = residual == "double"
        self.heads = width // head_dim
        self.norm = operations.LayerNorm(width, eps=1e-5, dtype=dtype, device=device)
        self.to_q = operations.Linear(width, width, bias=False, dtype=dtype, device=device)
        self.to_k = operations.Linear(width, width, bias=False, dtype=dtype, device=device)
        self.to_v = operations.Linear(width, width, bias=False, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(width, width, bias=True, dtype=dtype, device=device)])

    def subject_kv(self, subject: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the (already weighted) subject tokens: constant over a whole sampling run."""
        return self.to_k(subject), self.to_v(subject)

    def residual(self, h1: torch.Tensor, subject_k: torch.Tensor, subject_v: torch.Tensor,
                 attn_precision=None) -> torch.Tensor:
        """What the adapter adds to h1 (B, HW, C): u + O (double residual) or O (single); subject_k/v are
        (1 or B, M, C)."""
        u = self.norm(h1)
        batch = h1.shape[0]
        k = torch.cat([self.to_k(u), subject_k.expand(batch, -1, -1)], dim=1)
        v = torch.cat([self.to_v(u), subject_v.expand(batch, -1, -1)], dim=1)
        out = comfy_attention.optimized_attention(self.to_q(u), k, v, self.heads, attn_precision=attn_precision)
        out = self.to_out[0](out)
        return u + out if self.double_residual else out


class AdapterSet(nn.Module):
    """One adapter per transformer layer (`widths`, in the family's order) plus the per-layer subject weights."""

    def __init__(self, widths: tuple[int, ...] | list[int], head_dim: int, dtype=None, device=None,
                 operations=comfy.ops.manual_cast, residual: str = "double"):
        super().__init__()
        self.widths = tuple(widths)
        self.head_dim = head_dim
        self.residual = residual
        self.blocks = nn.ModuleList(BlockAdapter(w, head_dim, dtype, device, operations, residual) for w in widths)
        self.learnable_weights = nn.Parameter(torch.ones(len(widths), dtype=dtype, device=device))

    def subject_kv(self, slot: int, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.learnable_weights[slot].to(device=features.device, dtype=features.dtype)
        return self.blocks[slot].subject_kv(features * weight)

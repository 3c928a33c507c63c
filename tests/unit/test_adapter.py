"""The adapter computes exactly the reference formula, restated here with plain torch."""
import torch
import torch.nn.functional as F

from ezigen_lib.adapter import AdapterSet
from tiny_models import TINY_CHANNELS, TINY_HEAD_DIM, random_adapter_state, slot_widths

SD_WIDTHS = slot_widths(320)


def reference_residual(sd, slot, h1, subject, head_dim):
    """u + O with u = LN_a(h1), O = W_o MHA(W_q u, W_k [u; w s], W_v [u; w s]) + b_o."""
    p = lambda n: sd[f"blocks.{slot}.{n}"].double()  # noqa: E731
    h1 = h1.double()
    u = F.layer_norm(h1, (h1.shape[-1],), p("norm.weight"), p("norm.bias"), eps=1e-5)
    s = sd["learnable_weights"][slot].double() * subject.double().expand(h1.shape[0], -1, -1)
    kv_in = torch.cat([u, s], dim=1)
    q, k, v = u @ p("to_q.weight").T, kv_in @ p("to_k.weight").T, kv_in @ p("to_v.weight").T
    heads = h1.shape[-1] // head_dim
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)  # noqa: E731
    attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) / head_dim ** 0.5, dim=-1) @ split(v)
    out = attn.transpose(1, 2).reshape(h1.shape) @ p("to_out.0.weight").T + p("to_out.0.bias")
    return u + out


def test_adapter_matches_formula_for_every_slot():
    sd = random_adapter_state(seed=3)
    adapters = AdapterSet(slot_widths(TINY_CHANNELS), TINY_HEAD_DIM)
    adapters.load_state_dict(sd)
    g = torch.Generator().manual_seed(0)
    for slot, width in enumerate(adapters.widths):
        h1 = torch.randn(3, 20, width, generator=g)
        subject = torch.randn(1, 11, width, generator=g)
        with torch.no_grad():
            k, v = adapters.subject_kv(slot, subject)
            got = adapters.blocks[slot].residual(h1, k, v)
        want = reference_residual(sd, slot, h1, subject, TINY_HEAD_DIM)
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)


def test_state_dict_layout_is_the_converted_file_layout():
    adapters = AdapterSet(SD_WIDTHS, 64, dtype=torch.float16, device="meta")
    keys = set(adapters.state_dict())
    assert keys == set(random_adapter_state(model_channels=320))
    assert len(keys) == 16 * 7 + 1
    params = sum(p.numel() for p in adapters.parameters())
    assert params == 49_599_056  # docs/method.md section 5: the count of trainable parameters
    assert [b.heads for b in adapters.blocks] == [w // 64 for w in SD_WIDTHS]  # 5/10/20 heads as in SD2.1

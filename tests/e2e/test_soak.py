"""A short soak on the session server: every shipped workflow (small sizes) three times back to back;
after the first round the server's memory must not keep growing (the full benchmark: scripts/soak.py)."""
from __future__ import annotations

from soak import soak

# Measured on the stand-ins after warm-up: flat (README, "Soak": +0.03 MiB/prompt, +0.1 MiB in all). A
# leaked model copy or a 100 MiB buffer per prompt exceeds both bounds; allocator noise stays far below.
SLOPE_BOUND_MIB = 20.0
GROWTH_BOUND_MIB = 150.0


def test_memory_stays_flat_over_repeated_prompts(server):
    result = soak(server, rounds=3, warmup_rounds=1, log=lambda *a, **k: None)
    print(result.table())
    assert result.slope_mib_per_prompt() < SLOPE_BOUND_MIB, result.table()
    assert result.growth_mib() < GROWTH_BOUND_MIB, result.table()

"""When the refinement loop stops: the reference's rule, with its defaults of 3..9 loops (docs/method.md
section 9)."""
from __future__ import annotations

from dataclasses import dataclass

from .input_checks import require_finite

DEFAULT_MIN_LOOPS = 3
DEFAULT_MAX_LOOPS = 9
DEFAULT_THRESHOLD = 0.99


@dataclass(frozen=True)
class LoopPolicy:
    """loops = -1: autostop between min_loops and max_loops; loops = n >= 0: exactly n loops."""
    loops: int = -1
    min_loops: int = DEFAULT_MIN_LOOPS
    max_loops: int = DEFAULT_MAX_LOOPS
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self):
        require_finite("sim_threshold", self.threshold)  # a NaN threshold would only fail at the chart
        if self.loops < -1:
            raise ValueError(f"loops must be -1 (autostop) or a count >= 0, got {self.loops}")
        if self.loops == -1 and self.min_loops > self.max_loops:
            raise ValueError(f"min_loops ({self.min_loops}) is larger than max_loops ({self.max_loops})")

    @property
    def most_loops(self) -> int:
        return self.max_loops if self.loops == -1 else self.loops

    @property
    def uses_similarity(self) -> bool:
        return self.loops == -1 and self.max_loops > self.min_loops

    def next_step(self, done: int, last_similarity: float | None) -> tuple[bool, str]:
        """(run another loop?, why not) after `done` loops; the reference's
        ``while (cur < max and sim < thr) or cur < min``."""
        if self.loops >= 0:
            return (done < self.loops, f"ran the requested {self.loops} loops")
        if done < self.min_loops:
            return True, ""
        if done >= self.max_loops:
            return False, f"reached max_loops={self.max_loops}"
        if last_similarity is not None and last_similarity >= self.threshold:
            return False, f"similarity {last_similarity:.4f} >= threshold {self.threshold}"
        return True, ""

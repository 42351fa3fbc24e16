"""Eq. 3 of §5.3: the learning rate rises linearly for ``warmup_steps`` updates, then decays
with the inverse square root of the step number.

    lrate = scale · d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5)

The paper uses scale = 1 and warmup_steps = 4000. The schedule is a plain function of the
update number, so resuming a run only needs the step (pitfall 19).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InverseSqrtSchedule:
    d_model: int
    warmup_steps: int
    scale: float = 1.0

    def __call__(self, step: int) -> float:
        """Learning rate of update number ``step`` (the first update is step 1)."""
        step = max(step, 1)
        return self.scale * self.d_model ** -0.5 * min(step ** -0.5, step * self.warmup_steps ** -1.5)

    @property
    def peak(self) -> float:
        """The largest rate, reached at step = warmup_steps."""
        return self(self.warmup_steps)

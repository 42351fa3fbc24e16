"""Learning-rate schedules: the paper's Eq. 3, and warmup-then-decay for a fixed budget.

Eq. 3 of §5.3 (``schedule=inverse_sqrt``, the paper's):

    lrate = scale · d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5)

It was made for 100k-step runs; a run boxed into minutes stops while the rate is still high,
so its last weights are noisy and it never anneals. The budgeted schedules
(``schedule=linear`` / ``cosine``) rise the same way to the same peak, then fall from the peak
at the end of warmup to zero exactly at the end of the budget — of ``max_steps`` or of
``max_minutes``, whichever the run reaches first — as the "budgeted training" literature
recommends for fixed budgets. (An earlier version multiplied the warmup ramp by the decay line
from the first update, so a short budget never reached the peak: docs/quality.md.)

Every schedule is a plain function of (update number, budget used, budget used when warmup
ended): all three are in each checkpoint, so resuming a run needs nothing else
(docs/pitfalls.md: "Resume").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("inverse_sqrt", "linear", "cosine")


def eq3_peak(d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    """The largest rate of Eq. 3, reached at step = warmup_steps."""
    return scale * d_model**-0.5 * warmup_steps**-0.5


@dataclass(frozen=True)
class InverseSqrtSchedule:
    """Eq. 3: linear warmup, then decay with the inverse square root of the step."""

    d_model: int
    warmup_steps: int
    scale: float = 1.0

    def __call__(self, step: int, progress: float = 0.0, warmup_progress: float = 0.0) -> float:
        """Learning rate of update number ``step`` (the first update is step 1); the budget
        arguments are accepted for a common signature and ignored."""
        step = max(step, 1)
        return self.scale * self.d_model**-0.5 * min(step**-0.5, step * self.warmup_steps**-1.5)

    @property
    def peak(self) -> float:
        return eq3_peak(self.d_model, self.warmup_steps, self.scale)


@dataclass(frozen=True)
class BudgetSchedule:
    """Linear warmup to ``peak`` over ``warmup_steps``, then linear or cosine decay from the peak
    to zero: ``warmup_progress`` (the budget used when warmup ended) maps to the peak and
    ``progress`` = 1, the end of the run's budget, to zero."""

    peak: float
    warmup_steps: int
    shape: str = "linear"

    def __call__(self, step: int, progress: float = 0.0, warmup_progress: float = 0.0) -> float:
        step = max(step, 1)
        if step <= self.warmup_steps:
            return self.peak * step / self.warmup_steps
        span = max(1.0 - warmup_progress, 1e-12)
        remaining = min(max((1.0 - progress) / span, 0.0), 1.0)
        if self.shape == "cosine":
            decay = 0.5 * (1.0 - math.cos(math.pi * remaining))
        else:
            decay = remaining
        return self.peak * decay


def make_schedule(name: str, d_model: int, warmup_steps: int, scale: float) -> InverseSqrtSchedule | BudgetSchedule:
    """The schedule a config names; the budgeted ones share Eq. 3's peak so one ``lr_scale``
    means the same height in every schedule."""
    if name == "inverse_sqrt":
        return InverseSqrtSchedule(d_model, warmup_steps, scale)
    if name in ("linear", "cosine"):
        return BudgetSchedule(eq3_peak(d_model, warmup_steps, scale), warmup_steps, name)
    raise ValueError(f"unknown schedule '{name}' (choose from {', '.join(SCHEDULES)})")


def budget_progress(step: int, minutes: float, t) -> float:
    """Fraction of the run's budget used: of ``max_steps``, or of ``max_minutes`` when that
    comes first. The budgeted schedules reach zero, and training stops, at 1."""
    done = step / t.max_steps
    if t.max_minutes:
        done = max(done, minutes / t.max_minutes)
    return min(done, 1.0)

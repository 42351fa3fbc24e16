"""schedule.py: Eq. 3, lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), by hand."""

from __future__ import annotations

import math

import pytest

from aiayn.training.schedule import InverseSqrtSchedule, make_schedule

# The paper's setting: d_model = 512, warmup = 4000. By hand: 512^-0.5 = 0.0441941738,
# 4000^-0.5 = 0.0158113883, 4000^-1.5 = 3.95284708e-6.
PAPER = InverseSqrtSchedule(d_model=512, warmup_steps=4000)
HAND = {
    1: 0.0441941738 * 1 * 3.95284708e-6,  # warming up: 1.7469e-7
    2000: 0.0441941738 * 2000 * 3.95284708e-6,  # half-way up: 3.4939e-4
    4000: 0.0441941738 * 0.0158113883,  # the peak: 6.9877e-4
    16000: 0.0441941738 / math.sqrt(16000),  # 4 × warmup: half the peak, 3.4939e-4
}


@pytest.mark.parametrize("step", sorted(HAND))
def test_values_against_eq_3(step: int) -> None:
    assert PAPER(step) == pytest.approx(HAND[step], rel=1e-7)


def test_hand_values_relations() -> None:
    assert PAPER(4000) == pytest.approx(6.98771e-4, rel=1e-5)
    assert PAPER(16000) == pytest.approx(PAPER(4000) / 2, rel=1e-12)
    assert PAPER(2000) == pytest.approx(PAPER(4000) / 2, rel=1e-12)


def test_peak_at_warmup_and_monotone() -> None:
    rates = [PAPER(s) for s in range(1, 20001)]
    peak_step = max(range(len(rates)), key=rates.__getitem__) + 1
    assert peak_step == 4000
    assert PAPER.peak == PAPER(4000) == max(rates)
    assert all(a < b for a, b in zip(rates[:3999], rates[1:4000]))
    assert all(a > b for a, b in zip(rates[3999:], rates[4000:]))


def test_scale_and_small_warmup() -> None:
    s = InverseSqrtSchedule(d_model=64, warmup_steps=100, scale=0.5)
    assert s(100) == pytest.approx(0.5 * 64**-0.5 * 100**-0.5, rel=1e-12) == pytest.approx(0.00625)
    assert s(50) == pytest.approx(0.5 * 0.125 * 50 / 1000)
    assert s(400) == pytest.approx(0.5 * 0.125 / 20)
    # Step 0 (before the first update) is clamped to step 1, never a division by zero.
    assert s(0) == s(1) > 0


# ---------------------------------------------------------------------------- budgeted schedules
# By hand for d_model = 256, warmup 400, scale 0.4: Eq. 3's peak = 0.4 · 256^-0.5 · 400^-0.5
# = 0.4 · 0.0625 · 0.05 = 1.25e-3.
BUDGET = make_schedule("linear", d_model=256, warmup_steps=400, scale=0.4)
COSINE = make_schedule("cosine", d_model=256, warmup_steps=400, scale=0.4)


def test_budgeted_peak_is_eq3_peak() -> None:
    assert BUDGET.peak == pytest.approx(1.25e-3, rel=1e-12)
    assert BUDGET.peak == pytest.approx(InverseSqrtSchedule(256, 400, 0.4).peak, rel=1e-12)


# Warmup ended with 20 % of the budget used: the fall runs from there (the peak) to 1 (zero).
@pytest.mark.parametrize(
    "step, progress, expected",
    [
        (1, 0.0, 1.25e-3 / 400),  # warming up, step by step as Eq. 3 does
        (200, 0.1, 1.25e-3 * 0.5),  # half-way up: the ramp alone, whatever the budget used
        (400, 0.2, 1.25e-3),  # the last warmup update reaches the peak
        (401, 0.2, 1.25e-3),  # the fall starts at the peak
        (1000, 0.6, 1.25e-3 * 0.5),  # half of the fall: (1 - 0.6) / (1 - 0.2)
        (1500, 0.92, 1.25e-4),  # (1 - 0.92) / 0.8 = 0.1
        (2000, 1.0, 0.0),  # zero at the end of the budget
        (2100, 1.3, 0.0),  # never negative past it
    ],
)
def test_linear_decay_by_hand(step: int, progress: float, expected: float) -> None:
    assert BUDGET(step, progress, 0.2) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_decay_starts_at_the_peak_not_from_the_first_update() -> None:
    """The earlier schedule multiplied the warmup ramp by the decay line, so with 400 warmup
    updates in a 500-update budget the rate never came near the peak. Now the ramp reaches it
    and the fall shares the remaining budget."""
    rates = [BUDGET(s, (s - 1) / 500, 399 / 500) for s in range(1, 501)]
    assert max(rates) == pytest.approx(1.25e-3, rel=1e-12) == rates[399]
    assert rates[-1] == pytest.approx(1.25e-3 / 101, rel=1e-9)  # one hundredth-and-one of the fall left


def test_cosine_by_hand() -> None:
    assert COSINE(400, 0.0) == pytest.approx(1.25e-3)
    assert COSINE(800, 0.5) == pytest.approx(1.25e-3 / 2)  # cos(π/2) = 0
    assert COSINE(900, 0.25) == pytest.approx(1.25e-3 * (1 + math.cos(math.pi * 0.25)) / 2)
    assert COSINE(1000, 1.0) == pytest.approx(0.0, abs=1e-18)
    assert COSINE(900, 0.6, 0.2) == pytest.approx(1.25e-3 / 2)  # half of the fall that began at 0.2


def test_budgeted_rates_fall_monotonically_after_warmup() -> None:
    rates = [BUDGET(401 + k, 0.1 + k / 1000, 0.1) for k in range(901)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_make_schedule_names() -> None:
    assert make_schedule("inverse_sqrt", 512, 4000, 1.0) == PAPER
    assert PAPER(4000, 0.99) == PAPER(4000)  # Eq. 3 ignores the budget
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        make_schedule("step", 512, 4000, 1.0)

"""schedule.py: Eq. 3, lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), by hand."""

from __future__ import annotations

import math

import pytest

from aiayn.schedule import InverseSqrtSchedule

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
    assert s(100) == pytest.approx(0.5 * 64 ** -0.5 * 100 ** -0.5, rel=1e-12) == pytest.approx(0.00625)
    assert s(50) == pytest.approx(0.5 * 0.125 * 50 / 1000)
    assert s(400) == pytest.approx(0.5 * 0.125 / 20)
    # Step 0 (before the first update) is clamped to step 1, never a division by zero.
    assert s(0) == s(1) > 0

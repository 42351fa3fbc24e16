"""The layers Table 1 compares and their probes: the slope fit against data of a known exponent,
the path-length probe against the answers known for each kind of layer, the memory reading
against allocations of known size."""

from __future__ import annotations

import math
import random

import pytest
import torch

from aiayn.claims.probes import LAYERS, fit_slope, make_layer, measure, path_layers, peak_bytes
from aiayn.config import AiaynError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_slope_recovers_a_known_exponent():
    xs = [16, 32, 64, 128, 256]
    assert fit_slope(xs, [3.0 * x**1.7 for x in xs]) == pytest.approx(1.7, abs=1e-9)
    rng = random.Random(0)  # ±5 % multiplicative noise moves the exponent by little
    noisy = [0.5 * x**2 * math.exp(rng.uniform(-0.05, 0.05)) for x in xs]
    assert fit_slope(xs, noisy) == pytest.approx(2.0, abs=0.05)
    with pytest.raises(ValueError):
        fit_slope([16], [1.0])


def smallest_dilated_depth(n: int, k: int) -> int:
    """Dilations 1, k, k², …: after L layers position n sees back k^L − 1 positions."""
    depth = 0
    while k**depth < n:
        depth += 1
    return depth


@pytest.mark.parametrize("n", [2, 3, 5, 9, 16])
def test_path_length_probe_gives_the_known_answers(n):
    assert path_layers("self-attention", n) == 1  # every position attends to every other
    assert path_layers("recurrent (LSTM)", n) == 1  # one layer, through n − 1 recurrent steps
    assert path_layers("convolutional (GLU)", n, kernel=3) == math.ceil((n - 1) / 2)
    assert path_layers("convolutional (GLU)", n, kernel=4) == math.ceil((n - 1) / 3)
    assert path_layers("convolutional, dilated", n, kernel=3) == smallest_dilated_depth(n, 3)


def test_path_length_probe_says_when_the_stack_is_too_shallow():
    assert path_layers("convolutional (GLU)", 16, kernel=3, max_layers=4) is None


def test_peak_bytes_reads_tensor_allocations():
    def hold_two():
        a = torch.ones(250_000)  # 1 MB, kept
        b = torch.ones(500_000)  # 2 MB: 3 MB held at once
        return a, b

    def one_at_a_time():
        for _ in range(3):
            torch.ones(1_000_000)  # 4 MB, freed before the next

    assert 3_000_000 <= peak_bytes(hold_two) < 3_000_000 + 4096
    assert 4_000_000 <= peak_bytes(one_at_a_time) < 4_000_000 + 4096


@pytest.mark.parametrize("kind", LAYERS)
def test_a_steps_peak_holds_at_least_the_gradients_it_leaves(kind):
    """After forward + backward the weights' and the input's gradients are held: a lower bound
    known without the profiler. Wide layers on two positions: the weights' gradients outweigh the
    activations, so a count that also subtracted the previous run's gradients would fall below."""
    layer = make_layer(kind, 64, heads=2, kernel=3)
    found = measure(layer, 2, batch=1, d_model=64, warmup=1, repeats=1)
    gradients = 4 * (sum(p.numel() for p in layer.parameters()) + 2 * 64)
    assert found["peak_bytes"] >= gradients


def test_unfused_attention_memory_grows_as_n_squared_and_the_lstm_as_n():
    """Eq. 1 written out stores the (n × n) weights; an LSTM stores each step's gates."""

    def peak(kind: str, n: int) -> int:
        layer = make_layer(kind, 32, heads=2, kernel=3)
        return measure(layer, n, batch=1, d_model=32, warmup=0, repeats=1)["peak_bytes"]

    unfused = peak("self-attention, Eq. 1 unfused", 512) / peak("self-attention, Eq. 1 unfused", 256)
    lstm = peak("recurrent (LSTM)", 512) / peak("recurrent (LSTM)", 256)
    assert 3.3 < unfused < 4.1
    assert 1.8 < lstm < 2.2


def test_an_unknown_layer_kind_is_one_line_listing_the_kinds():
    with pytest.raises(AiaynError, match="unknown layer kind 'gru'.*recurrent \\(LSTM\\)"):
        make_layer("gru", 8, heads=2, kernel=3)

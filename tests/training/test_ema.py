"""The moving average of the weights: the recursion against a float64 loop written out by hand,
the ramp's values, tied matrices and buffers in its state dict, and weights given back after use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aiayn.training.ema import WeightEMA, ema_decay_at


def test_the_decay_ramps_up_then_holds():
    assert ema_decay_at(0.998, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.998, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.998, 1000) == pytest.approx(1001 / 1010)
    assert ema_decay_at(0.998, 4491) == 0.998  # (1 + t) / (10 + t) passes 0.998 at t = 4,491
    assert ema_decay_at(0.9, 1000) == 0.9


def test_update_is_the_recursion_over_the_weights_it_saw():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = WeightEMA(model, 0.95)
    expected = [p.detach().double().clone() for p in model.parameters()]
    for step in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        ema.update(model, step)
        d = min(0.95, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * p.detach().double() for e, p in zip(expected, model.parameters())]
    for shadow, want in zip(ema.shadow, expected):
        torch.testing.assert_close(shadow.double(), want, rtol=1e-5, atol=1e-6)


class Tied(nn.Module):
    """An embedding shared with the output projection, and a buffer, as the Transformer has."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("table", torch.arange(8.0))


def test_state_dict_has_the_models_keys_one_average_per_tied_matrix_and_its_buffers():
    model = Tied()
    ema = WeightEMA(model, 0.5)
    assert len(ema.shadow) == 1  # the tied matrix once
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    ema.update(model, 100)  # d = 0.5
    state = ema.state_dict(model)
    assert state.keys() == model.state_dict().keys()
    torch.testing.assert_close(state["embed.weight"], model.embed.weight.detach() - 0.5)
    assert torch.equal(state["out.weight"], state["embed.weight"])
    assert torch.equal(state["table"], model.table)
    again = WeightEMA(Tied(), 0.5)
    again.load_state_dict(model, state)
    assert torch.equal(again.shadow[0], ema.shadow[0])
    with pytest.raises(KeyError, match="embed.weight"):
        again.load_state_dict(model, {"table": state["table"]})


def test_applied_swaps_the_average_in_and_gives_the_weights_back_even_on_error():
    model = nn.Linear(2, 2)
    ema = WeightEMA(model, 0.5)
    own = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for s in ema.shadow:
            s.fill_(7.0)
    with ema.applied(model):
        assert all(bool((p == 7.0).all()) for p in model.parameters())
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), own))
    with pytest.raises(RuntimeError), ema.applied(model):
        raise RuntimeError("a failing validation")
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), own))

"""layers.py: the PE formula of §3.5, positions and embeddings (§3.4), and the CPU inference
path of Linear against nn.Linear."""

from __future__ import annotations

import math

import pytest
import torch
from modelkit import TOL, D, make_model, max_diff
from torch import nn

from aiayn.config import PAD_ID, AiaynError
from aiayn.models.layers import Linear, PositionalEncoding, sinusoid_table
from aiayn.models.transformer import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# Positions and embeddings


def test_sinusoid_table_matches_the_formula() -> None:
    d = 6
    table = sinusoid_table(10, d)
    assert table.shape == (10, d)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))  # interleaved, not halves
    hand = {
        (1, 0): math.sin(1.0),
        (1, 1): math.cos(1.0),
        (2, 2): math.sin(2 / 10000 ** (2 / 6)),
        (2, 3): math.cos(2 / 10000 ** (2 / 6)),
        (3, 4): math.sin(3 / 10000 ** (4 / 6)),
        (9, 5): math.cos(9 / 10000 ** (4 / 6)),
    }
    for (pos, i), value in hand.items():
        assert table[pos, i].item() == pytest.approx(value, abs=1e-7)
    # Large positions stay accurate (docs/pitfalls.md: "Sinusoid layout"): the table is computed in float64.
    assert sinusoid_table(1001, 4)[1000, 0].item() == pytest.approx(math.sin(1000.0), abs=1e-6)
    odd = sinusoid_table(3, 5)
    assert odd[2, 4].item() == pytest.approx(math.sin(2 / 10000 ** (4 / 5)), abs=1e-7)


def test_positional_encoding_offset_and_max_len() -> None:
    pe = PositionalEncoding(10, 6)
    assert torch.equal(pe(3, offset=4), sinusoid_table(10, 6)[4:7])
    assert not list(pe.parameters())
    with pytest.raises(AiaynError, match="max_len"):
        pe(11)
    with pytest.raises(AiaynError, match="max_len"):
        pe(5, offset=6)
    model = make_model(max_len=8)
    ids = torch.full((1, 9), 5)
    with pytest.raises(AiaynError, match="max_len"):
        model.encode(ids, ids != PAD_ID)


def test_learned_positions_are_trainable() -> None:
    pe = PositionalEncoding(10, 6, learned=True)
    params = list(pe.parameters())
    assert len(params) == 1 and params[0].shape == (10, 6) and params[0].requires_grad
    pe(3, offset=2).sum().backward()
    assert torch.equal(params[0].grad.sum(-1), torch.tensor([0, 0, 6, 6, 6, 0, 0, 0, 0, 0.0]))
    with pytest.raises(AiaynError):
        pe(11)
    model = make_model(positional="learned")
    names = [n for n, _ in model.named_parameters() if "positions" in n]
    assert len(names) == 2
    assert count_parameters(model) == count_parameters(make_model()) + 2 * 64 * D


def test_input_embedding_scales_tokens_and_adds_positions() -> None:
    model = make_model()
    ids = torch.tensor([[5, 7, 9]])
    emb = model.decoder.embedding
    expected = emb.tokens.weight[ids] * math.sqrt(D) + sinusoid_table(64, D)[:3]
    assert max_diff(emb(ids), expected) < 1e-6
    assert max_diff(emb(ids, offset=2), emb.tokens.weight[ids] * math.sqrt(D) + sinusoid_table(64, D)[2:5]) < 1e-6


# ---------------------------------------------------------------------------------------------
# Linear's CPU inference path


@pytest.mark.parametrize("bias", [True, False])
def test_linear_inference_path_equals_nn_linear(bias: bool, monkeypatch) -> None:
    """oneDNN's matmul in inference on ≥ 4 rows, nn.Linear's own path otherwise: the same values."""
    import aiayn.models.layers as model_module

    calls = []
    if model_module.ONEDNN_LINEAR is not None:
        real = model_module.ONEDNN_LINEAR
        monkeypatch.setattr(model_module, "ONEDNN_LINEAR", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    ours, ref = Linear(D, 48, bias=bias), nn.Linear(D, 48, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 5, D)
    with torch.inference_mode():
        assert max_diff(ours(x), ref(x)) < TOL
        assert max_diff(ours(x[:1, :3]), ref(x[:1, :3])) < TOL  # 3 rows: nn.Linear's path
    assert len(calls) == (1 if model_module.ONEDNN_LINEAR is not None else 0)
    out = ours(x)  # with gradients: nn.Linear's path, differentiable
    out.sum().backward()
    assert ours.weight.grad is not None and len(calls) <= 1

"""loss.py (§5.4): label-smoothed cross-entropy against hand-computed values and an explicit
target distribution; sums that make gradient accumulation exact
(docs/pitfalls.md: "Smoothing and padding" and "Accumulation")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aiayn.config import PAD_ID, ModelConfig
from aiayn.models.transformer import Transformer
from aiayn.training.loss import label_smoothed_cross_entropy


def test_hand_computed_example() -> None:
    """V = 5, ε = 0.1: mass 0.9 on gold, 0.1 / 3 on each of the other non-PAD tokens."""
    logits = torch.tensor([[[0.0, 1.0, 2.0, 0.5, -1.0], [1.0, 0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 0.0, 1.0, 4.0]]])
    target = torch.tensor([[2, 4, PAD_ID]])
    # Position 0: log Σ exp = log(1 + e + e² + e^0.5 + e^-1) = 2.574437939627796, so
    #   log p = (-2.5744, -1.5744, -0.5744, -2.0744, -3.5744) and
    #   loss = -(0.9 · -0.5744 + 0.1/3 · (-1.5744 - 2.0744 - 3.5744)) = 0.7577712729611294.
    # Position 1: every non-PAD logit is 0, so each log p = -log(e + 4) = -1.904832441554448,
    #   and the loss is 1.904832441554448 whatever ε is.
    # Position 2 is padding: left out.
    loss, nll, n_tokens = label_smoothed_cross_entropy(logits, target, 0.1)
    assert n_tokens == 2
    assert loss.item() == pytest.approx(0.7577712729611294 + 1.904832441554448, abs=1e-6)
    assert nll.item() == pytest.approx(0.5744379396277961 + 1.904832441554448, abs=1e-6)
    lse = math.log(1 + math.e + math.e**2 + math.e**0.5 + math.e**-1)
    by_formula = -(0.9 * (2.0 - lse) + 0.1 / 3 * ((1.0 - lse) + (0.5 - lse) + (-1.0 - lse))) + math.log(math.e + 4)
    assert loss.item() == pytest.approx(by_formula, abs=1e-6)


def random_problem(seed: int = 0, b: int = 3, t: int = 6, v: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 2
    target = torch.randint(1, v, (b, t), generator=g)
    target[0, 4:] = PAD_ID
    target[2, 1:] = PAD_ID
    return logits, target


def test_without_smoothing_equals_cross_entropy() -> None:
    logits, target = random_problem()
    loss, nll, n_tokens = label_smoothed_cross_entropy(logits, target, 0.0)
    reference = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD_ID, reduction="sum")
    assert n_tokens == int((target != PAD_ID).sum()) == 11
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert nll.item() == pytest.approx(reference.item(), rel=1e-6)
    _, smoothed_nll, _ = label_smoothed_cross_entropy(logits, target, 0.1)
    assert smoothed_nll.item() == pytest.approx(reference.item(), rel=1e-6)


def test_smoothing_against_explicit_target_distribution() -> None:
    logits, target = random_problem(seed=1)
    v, eps = logits.size(-1), 0.1
    keep = target != PAD_ID
    gold = target[keep]
    q = torch.full((gold.numel(), v), eps / (v - 2))
    q[torch.arange(gold.numel()), gold] = 1 - eps
    q[:, PAD_ID] = 0.0
    assert torch.allclose(q.sum(-1), torch.ones(gold.numel()))
    expected = -(q * logits[keep].log_softmax(-1)).sum()
    loss, _, _ = label_smoothed_cross_entropy(logits, target, eps)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_padding_changes_nothing() -> None:
    logits, target = random_problem(seed=2)
    before = label_smoothed_cross_entropy(logits, target, 0.1)
    # Append padded positions with arbitrary (large) logits, and a fully padded sentence.
    g = torch.Generator().manual_seed(9)
    wide_logits = torch.cat([logits, torch.randn(3, 4, 11, generator=g) * 50], dim=1)
    wide_target = torch.cat([target, torch.full((3, 4), PAD_ID)], dim=1)
    wide_logits = torch.cat([wide_logits, torch.randn(1, 10, 11, generator=g)], dim=0)
    wide_target = torch.cat([wide_target, torch.full((1, 10), PAD_ID)], dim=0)
    after = label_smoothed_cross_entropy(wide_logits, wide_target, 0.1)
    assert after[2] == before[2]
    assert after[0].item() == pytest.approx(before[0].item(), rel=1e-6)
    assert after[1].item() == pytest.approx(before[1].item(), rel=1e-6)


def test_loss_gradient_reaches_only_real_positions() -> None:
    logits, target = random_problem(seed=3)
    logits.requires_grad_(True)
    label_smoothed_cross_entropy(logits, target, 0.1)[0].backward()
    assert torch.all(logits.grad[target == PAD_ID] == 0)
    # Gradient of a sum of cross-entropies: softmax − q per real position, so each row sums to 0.
    assert torch.allclose(logits.grad[target != PAD_ID].sum(-1), torch.zeros(11), atol=1e-6)


def test_gradient_accumulation_equals_one_batch() -> None:
    """Sum of sums over micro-batches / total tokens = one big batch (docs/pitfalls.md: "Accumulation")."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=30, d_model=16, d_ff=32, n_heads=2, n_layers=1, dropout=0.0, max_len=32))
    g = torch.Generator().manual_seed(1)
    src_len, tgt_len = torch.tensor([7, 2, 5, 3]), torch.tensor([2, 8, 6, 1])  # unequal tokens per half
    src = torch.randint(4, 30, (4, 7), generator=g)
    src_mask = torch.arange(7)[None, :] < src_len[:, None]
    src = src.masked_fill(~src_mask, PAD_ID)
    tgt_in = torch.randint(4, 30, (4, 8), generator=g)
    tgt_out = torch.randint(4, 30, (4, 8), generator=g).masked_fill(
        torch.arange(8)[None, :] >= tgt_len[:, None], PAD_ID
    )

    def grads_after(pieces: list[slice], normalise) -> list[torch.Tensor]:
        model.zero_grad()
        total = int((tgt_out != PAD_ID).sum())
        for piece in pieces:
            loss, _, n = label_smoothed_cross_entropy(
                model(src[piece], tgt_in[piece], src_mask[piece]), tgt_out[piece], 0.1
            )
            normalise(loss, n, total, len(pieces)).backward()
        return [p.grad.clone() for p in model.parameters()]

    def by_total(loss, n, total, k):
        return loss / total

    whole = grads_after([slice(0, 4)], by_total)
    split = grads_after([slice(0, 2), slice(2, 4)], by_total)
    assert max((a - b).abs().max().item() for a, b in zip(whole, split)) < 1e-6
    # The mean of per-piece means weighs the pieces' tokens unequally: that must differ.
    naive = grads_after([slice(0, 2), slice(2, 4)], lambda loss, n, total, k: loss / n / k)
    assert max((a - b).abs().max().item() for a, b in zip(whole, naive)) > 1e-4

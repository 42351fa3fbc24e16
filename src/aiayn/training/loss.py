"""§5.4: label-smoothed cross-entropy (ε_ls = 0.1 in the paper).

The target distribution puts 1 − ε on the reference token and spreads ε evenly over the
other V − 2 tokens: padding gets no mass (docs/pitfalls.md: "Smoothing and padding", as OpenNMT-py), and padded target
positions are left out entirely. Sums are returned, not means, so the trainer can divide by
the number of target tokens of the whole update, across micro-batches and ranks
(docs/pitfalls.md: "Accumulation" and "DDP normalisation").
"""

from __future__ import annotations

import torch
from torch import Tensor

from aiayn.config import PAD_ID


def label_smoothed_cross_entropy(
    logits: Tensor, target: Tensor, epsilon: float, pad_id: int = PAD_ID
) -> tuple[Tensor, Tensor, int]:
    """logits (B, T, V) and target (B, T) with padding, or logits (n, V) and target (n,) of real
    tokens only (``Transformer.forward`` with ``tgt_mask``) -> (smoothed loss sum, NLL sum, n).

    loss = −(1 − ε) log p(y) − ε / (V − 2) · Σ_{v ∉ {y, PAD}} log p(v)
    """
    if logits.dim() == 3:
        keep = target != pad_id  # (B, T)
        logits, target = logits[keep], target[keep]  # (n, V), (n,)
    lprobs = logits.log_softmax(dim=-1, dtype=torch.float32)  # (n, V)
    gold = target  # (n,)
    nll = -lprobs.gather(-1, gold[:, None]).squeeze(-1)  # (n,)
    if epsilon == 0.0:
        loss = nll
    else:
        vocab = lprobs.size(-1)
        others = -lprobs.sum(dim=-1) - nll + lprobs[:, pad_id]  # −Σ log p over v ∉ {y, PAD}
        loss = (1.0 - epsilon) * nll + epsilon / (vocab - 2) * others
    return loss.sum(), nll.sum(), int(gold.numel())

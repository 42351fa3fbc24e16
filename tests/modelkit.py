"""Shared by the tests of layers, attention, cache and model: a small config, models, padded
batches, and torch.nn.MultiheadAttention with its weights copied into aiayn's."""

from __future__ import annotations

import torch
from torch import nn

from aiayn.config import PAD_ID, ModelConfig
from aiayn.models.attention import MultiHeadAttention
from aiayn.models.transformer import Transformer

D, H, D_FF = 32, 4, 64
TOL = 1e-5


def small_cfg(**overrides) -> ModelConfig:
    values = dict(vocab_size=50, d_model=D, d_ff=D_FF, n_heads=H, n_layers=2, dropout=0.0, max_len=64)
    values.update(overrides)
    return ModelConfig(**values)


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_cfg(**overrides)).eval()


def lengths_to_mask(lengths: list[int], size: int) -> torch.Tensor:
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]  # (B, size)


def random_batch(lengths: list[int], size: int, vocab: int = 50, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = lengths_to_mask(lengths, size)
    ids = torch.randint(4, vocab, (len(lengths), size), generator=g)
    return ids.masked_fill(~mask, PAD_ID), mask


def randomize_(module: nn.Module, seed: int) -> None:
    """Non-trivial values for every parameter (nn's biases start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * D**-0.5)


def copy_mha_(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    d = ref.embed_dim
    w, b = ref.in_proj_weight, ref.in_proj_bias
    with torch.no_grad():
        for i, lin in enumerate((ours.w_q, ours.w_k, ours.w_v)):
            lin.weight.copy_(w[i * d : (i + 1) * d])
            lin.bias.copy_(b[i * d : (i + 1) * d])
        ours.w_o.weight.copy_(ref.out_proj.weight)
        ours.w_o.bias.copy_(ref.out_proj.bias)


def mha_pair(seed: int = 0) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(D, H, batch_first=True)
    randomize_(ref, seed)
    ours = MultiHeadAttention(D, H, D // H, D // H)
    copy_mha_(ours, ref)
    return ours.eval(), ref.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()

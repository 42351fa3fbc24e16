"""The building blocks of §3 that are not attention: linear maps, the feed-forward network (Eq. 2),
positional encodings (§3.5), the scaled input embedding (§3.4) and the residual block (§3.1).

Shape legend: B batch, T positions, D d_model, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.config import AiaynError


def _onednn_linear() -> Any:
    """oneDNN's fp32 matmul with bias, as PyTorch registers it (``None`` in builds without oneDNN)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return None
    return torch.ops.mkldnn._linear_pointwise


ONEDNN_LINEAR = _onednn_linear()
ONEDNN_MIN_ROWS = 4  # below this, PyTorch's default path measured faster


def float32_cpu_inference(x: Tensor, weight: Tensor) -> bool:
    """Whether ``x @ weight.T`` may take oneDNN's float32 path: both float32 on a CPU, no gradients
    wanted, no autocast (which would make it bf16)."""
    return (
        ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


class Linear(nn.Linear):
    """nn.Linear, y = x Wᵀ + b. In CPU inference (no gradients, no autocast, float32) on at least
    ``ONEDNN_MIN_ROWS`` rows it runs oneDNN's matmul instead of PyTorch's default BLAS call:
    at decoding shapes (128 rows by 256 × 768 or 256 × 8000) that measured 2.2–2.4× faster on
    the AMD CPU of docs/performance.md, same weights, same float32 arithmetic."""

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() >= ONEDNN_MIN_ROWS * self.in_features and float32_cpu_inference(x, self.weight):
            return ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class PositionwiseFeedForward(nn.Module):
    """Eq. 2: FFN(x) = max(0, x W₁ + b₁) W₂ + b₂."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_1 = Linear(d_model, d_ff)
        self.w_2 = Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(F.relu(self.w_1(x)))


def sinusoid_table(max_len: int, d_model: int) -> Tensor:
    """§3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(…), interleaved
    as in the paper (not the sin-half | cos-half layout of tensor2tensor, fairseq, Marian).
    Computed in float64 so large positions stay exact (docs/pitfalls.md: "Sinusoid layout").
    Returns (max_len, D)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = pos / 10000.0 ** (two_i / d_model)  # (max_len, ⌈D/2⌉)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table.float()


class PositionalEncoding(nn.Module):
    """§3.5: fixed sinusoids, or learned position embeddings (Table 3, row E)."""

    def __init__(self, max_len: int, d_model: int, *, learned: bool = False):
        super().__init__()
        self.learned = nn.Embedding(max_len, d_model) if learned else None
        if not learned:
            self.register_buffer("table", sinusoid_table(max_len, d_model), persistent=False)

    def forward(self, length: int, *, offset: int = 0) -> Tensor:
        """Encodings for positions offset … offset+length-1: (length, D)."""
        table = self.learned.weight if self.learned is not None else self.table
        if offset + length > table.size(0):
            raise AiaynError(
                f"a sequence of {offset + length} positions exceeds the model's max_len={table.size(0)}; "
                f"shorten the input (or train with a larger model.max_len)"
            )
        return table[offset : offset + length]


class InputEmbedding(nn.Module):
    """§3.4 + §3.5: token embedding × √d_model + positional encoding, then dropout (§5.4)."""

    def __init__(self, tokens: nn.Embedding, positions: PositionalEncoding, dropout: float):
        super().__init__()
        self.tokens, self.positions = tokens, positions
        self.scale = math.sqrt(tokens.embedding_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, *, offset: int = 0) -> Tensor:
        x = self.tokens(ids) * self.scale + self.positions(ids.size(1), offset=offset)  # (B, T, D)
        return self.dropout(x)


class Residual(nn.Module):
    """§3.1 / §5.4: LayerNorm(x + Dropout(Sublayer(x))) (post-norm, the paper), or
    x + Dropout(Sublayer(LayerNorm(x))) (pre-norm, a named option)."""

    def __init__(self, d_model: int, dropout: float, *, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def before(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def after(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_out)
        return x if self.pre_norm else self.norm(x)

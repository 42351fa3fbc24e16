"""Attention, §3.2: masks, scaled dot-product attention (Eq. 1) and multi-head attention.

Shape legend (batch-first everywhere):
    B    batch (sentences)            N    decoder rows = B × beam
    S    source length                T    target length (queries)
    D    d_model                      H    heads
    d_k, d_v   per-head key / value width

Masks have one polarity, everywhere: True = this key may be attended to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.models.layers import Linear


def padding_mask(mask: Tensor) -> Tensor:
    """(B, S) True = real token -> (B, 1, 1, S) attention mask.

    A row with no real token at all would make softmax 0/0 = NaN (docs/pitfalls.md: "Fully
    masked rows"); such a row is let attend everywhere instead. Its outputs are padding and
    never reach the loss.
    """
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask[:, None, None, :]  # (B, 1, 1, S)


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """(T_q, T_k): query i may see key j iff j <= i + (T_k - T_q), aligned bottom-right so a
    few new queries against a longer cache see the whole past (docs/pitfalls.md: "Causal alignment")."""
    q = torch.arange(t_q, device=device)[:, None]
    k = torch.arange(t_k, device=device)[None, :]
    return k <= q + (t_k - t_q)


# A decoding step has one query per row (beams folded into queries: beam of them). With so few
# queries the fused CPU kernel's blocking saves nothing and its per-block overhead dominates: the
# explicit path measured 1.4–2.7× faster there (docs/performance.md).
FEW_QUERIES = 8


class ScaledDotProductAttention(nn.Module):
    """Eq. 1: Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V.

    Uses PyTorch's fused kernel unless the weights are asked for, or the inputs are bf16 on a
    CPU, where the fused kernel's backward measured 4× slower than the explicit path at
    sentence lengths (bench/, docs/performance.md), or a CPU decoding step has at most
    ``FEW_QUERIES`` queries. The explicit path computes softmax in float32 and can return the
    weights (B, H, T_q, T_k).
    """

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        t_q, t_k = q.size(-2), k.size(-2)
        cpu = q.device.type == "cpu"
        explicit = (
            need_weights
            or (cpu and q.dtype == torch.bfloat16)
            or (cpu and t_q <= FEW_QUERIES and not torch.is_grad_enabled())
        )
        if is_causal and (explicit or mask is not None or t_q != t_k):
            # The fused kernel's own causal mask is top-left aligned and cannot be combined with
            # attn_mask (docs/pitfalls.md: "Causal alignment"): merge a bottom-right one instead.
            causal = causal_mask(t_q, t_k, q.device)
            mask, is_causal = (causal if mask is None else mask & causal), False
        if not explicit:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal), None
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T_q, T_k)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        # Softmax in at least float32, float64 kept for gradcheck (docs/pitfalls.md: "Softmax precision").
        weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
        return weights @ v, (weights if need_weights else None)  # (B, H, T_q, d_v)


def fold_beams(q: Tensor, beam: int) -> Tensor:
    """(B·beam, H, T, d) -> (B, H, beam·T, d): a sentence's beams become more queries against the
    sentence's one copy of the keys and values, so the encoder output is never copied per beam."""
    if beam == 1:
        return q
    n, h, t, d = q.shape
    q = q.view(n // beam, beam, h, t, d).transpose(1, 2)  # (B, H, beam, T, d)
    return q.reshape(n // beam, h, beam * t, d)  # (B, H, beam·T, d)


def unfold_beams(x: Tensor, beam: int) -> Tensor:
    """(B, H, beam·T, e) -> (B·beam, H, T, e): ``fold_beams`` undone on attention outputs (e = d_v)
    or weights (e = S)."""
    if beam == 1:
        return x
    b, h, bt, e = x.shape
    x = x.view(b, h, beam, bt // beam, e).transpose(1, 2)  # (B, beam, H, T, e)
    return x.reshape(b * beam, h, bt // beam, e)  # (N, H, T, e)


def dot_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, *, beam: int = 1, need_weights: bool = False
) -> tuple[Tensor, Tensor | None]:
    """One head of softmax(q kᵀ) v with no 1/√d scaling: the attention of the two baselines,
    Luong et al. (2015) Eq. 8 (``dot``; ``general`` passes W_a h̄_s as ``k``) and Gehring et al.
    (2017) Eq. 1 (multi-step attention).

    q (N, T, d) for N = B × beam decoder rows; k (B, S, d), v (B, S, e) once per sentence;
    mask (B, 1, 1, S) from ``padding_mask``. Returns (N, T, e) and, on request, the weights
    (N, 1, T, S): the Transformer's (N, H, T, S) with one head. Softmax in at least float32."""
    q = fold_beams(q[:, None], beam)  # (B, 1, beam·T, d)
    scores = q @ k[:, None].transpose(-2, -1)  # (B, 1, beam·T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    out = unfold_beams(weights @ v[:, None], beam)  # (N, 1, T, e)
    weights = unfold_beams(weights, beam) if need_weights else None  # (N, 1, T, S)
    return out[:, 0], weights  # (N, T, e)


class MultiHeadAttention(nn.Module):
    """§3.2.2: MultiHead(Q, K, V) = Concat(head_1, …, head_h) Wᴼ, head_i = Attention(Q W_iᵠ, K W_iᴷ, V W_iⱽ).

    Keys and values are projected by ``project_kv`` so a decoder can keep them in a cache
    (self-attention grows by one step; cross-attention is computed once per sentence).
    """

    def __init__(self, d_model: int, n_heads: int, d_k: int, d_v: int):
        super().__init__()
        self.n_heads, self.d_k, self.d_v = n_heads, d_k, d_v
        self.w_q = Linear(d_model, n_heads * d_k)
        self.w_k = Linear(d_model, n_heads * d_k)
        self.w_v = Linear(d_model, n_heads * d_v)
        self.w_o = Linear(n_heads * d_v, d_model)
        self.attention = ScaledDotProductAttention()

    def _split(self, x: Tensor, d: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, d).transpose(1, 2)  # (B, H, T, d)

    def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, D) -> K (B, H, S, d_k), V (B, H, S, d_v)."""
        return self._split(self.w_k(source), self.d_k), self._split(self.w_v(source), self.d_v)

    def forward(
        self,
        x: Tensor,
        kv: tuple[Tensor, Tensor],
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        need_weights: bool = False,
        beam: int = 1,
    ) -> tuple[Tensor, Tensor | None]:
        """x (N, T, D) queries; kv from ``project_kv``. With ``beam`` > 1, the N = B × beam
        query rows share B key/value rows (cross-attention in beam search)."""
        n, t, _ = x.shape
        q = fold_beams(self._split(self.w_q(x), self.d_k), beam)  # (N/beam, H, beam·T, d_k)
        out, weights = self.attention(q, *kv, mask, is_causal=is_causal, need_weights=need_weights)
        out = unfold_beams(out, beam)  # (N, H, T, d_v)
        weights = None if weights is None else unfold_beams(weights, beam)  # (N, H, T, T_k)
        out = out.transpose(1, 2).reshape(n, t, self.n_heads * self.d_v)  # (N, T, H·d_v)
        return self.w_o(out), weights

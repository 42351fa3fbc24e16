"""The Transformer of §3 of *Attention Is All You Need*, one class per idea of the paper.

Shape legend (batch-first everywhere):
    B    batch (sentences)            N    decoder rows = B × beam
    S    source length                T    target length (queries)
    D    d_model                      V    vocabulary size
    H    heads                        d_k, d_v   per-head key / value width

Masks have one polarity, everywhere: True = this key may be attended to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.config import ModelConfig


def padding_mask(mask: Tensor) -> Tensor:
    """(B, S) True = real token -> (B, 1, 1, S) attention mask.

    A row with no real token at all would make softmax 0/0 = NaN (docs/pitfalls.md: "Fully masked rows"); such a row
    is let attend everywhere instead. Its outputs are padding and never reach the loss.
    """
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask[:, None, None, :]  # (B, 1, 1, S)


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """(T_q, T_k): query i may see key j iff j <= i + (T_k - T_q), aligned bottom-right so a
    few new queries against a longer cache see the whole past (docs/pitfalls.md: "Causal alignment")."""
    q = torch.arange(t_q, device=device)[:, None]
    k = torch.arange(t_k, device=device)[None, :]
    return k <= q + (t_k - t_q)


def _onednn_linear() -> Any:
    """oneDNN's fp32 matmul with bias, as PyTorch registers it (``None`` in builds without oneDNN)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return None
    return torch.ops.mkldnn._linear_pointwise


ONEDNN_LINEAR = _onednn_linear()
ONEDNN_MIN_ROWS = 4  # below this, PyTorch's default path measured faster


class Linear(nn.Linear):
    """nn.Linear, y = x Wᵀ + b. In CPU inference (no gradients, no autocast, float32) on at least
    ``ONEDNN_MIN_ROWS`` rows it runs oneDNN's matmul instead of PyTorch's default BLAS call:
    at decoding shapes (128 rows by 256 × 768 or 256 × 8000) that measured 2.2–2.4× faster on
    the AMD CPU of docs/performance.md, same weights, same float32 arithmetic."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            ONEDNN_LINEAR is not None
            and x.device.type == "cpu"
            and x.dtype == self.weight.dtype == torch.float32
            and x.numel() >= ONEDNN_MIN_ROWS * self.in_features
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        ):
            return ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class ScaledDotProductAttention(nn.Module):
    """Eq. 1: Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V.

    Uses PyTorch's fused kernel unless the weights are asked for, or the inputs are bf16 on a
    CPU, where the fused kernel's backward measured 4× slower than the explicit path at
    sentence lengths (bench/, docs/performance.md). The explicit path computes softmax in
    float32 and can return the weights (B, H, T_q, T_k).
    """

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        t_q, t_k = q.size(-2), k.size(-2)
        explicit = need_weights or (q.device.type == "cpu" and q.dtype == torch.bfloat16)
        if is_causal and (explicit or mask is not None or t_q != t_k):
            # The fused kernel's own causal mask is top-left aligned and exclusive of attn_mask
            # (docs/pitfalls.md: "Causal alignment"): build the bottom-right aligned one and merge it instead.
            causal = causal_mask(t_q, t_k, q.device)
            mask, is_causal = (causal if mask is None else mask & causal), False
        if not explicit:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal), None
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T_q, T_k)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        # Softmax in at least float32 (docs/pitfalls.md: "Softmax precision"), float64 kept for gradcheck.
        weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
        return weights @ v, (weights if need_weights else None)  # (B, H, T_q, d_v)


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
        is_causal: bool = False,
        need_weights: bool = False,
        beam: int = 1,
    ) -> tuple[Tensor, Tensor | None]:
        """x (N, T, D) queries; kv from ``project_kv``. With ``beam`` > 1, the N = B × beam
        query rows share B key/value rows (cross-attention in beam search): the beams are
        folded into the query axis instead of copying the encoder output beam times."""
        k, v = kv
        n, t, _ = x.shape
        q = self._split(self.w_q(x), self.d_k)  # (N, H, T, d_k)
        if beam > 1:
            q = q.view(n // beam, beam, self.n_heads, t, self.d_k).transpose(1, 2)  # (B, H, beam, T, d_k)
            q = q.reshape(n // beam, self.n_heads, beam * t, self.d_k)  # (B, H, beam·T, d_k)
        out, weights = self.attention(q, k, v, mask, is_causal, need_weights)  # (·, H, ·, d_v)
        if beam > 1:
            out = out.view(n // beam, self.n_heads, beam, t, self.d_v).transpose(1, 2)  # (B, beam, H, T, d_v)
            out = out.reshape(n, self.n_heads, t, self.d_v)  # (N, H, T, d_v)
            if weights is not None:
                s = weights.size(-1)
                weights = (
                    weights.view(n // beam, self.n_heads, beam, t, s).transpose(1, 2).reshape(n, self.n_heads, t, s)
                )
        out = out.transpose(1, 2).reshape(n, t, self.n_heads * self.d_v)  # (N, T, H·d_v)
        return self.w_o(out), weights


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
    Computed in float64 so large positions stay exact (docs/pitfalls.md: "Sinusoid layout"). Returns (max_len, D)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = pos / 10000.0 ** (two_i / d_model)  # (max_len, ⌈D/2⌉)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table.float()


class PositionalEncoding(nn.Module):
    """§3.5: fixed sinusoids, or learned position embeddings (Table 3, row E)."""

    def __init__(self, max_len: int, d_model: int, learned: bool = False):
        super().__init__()
        self.learned = nn.Embedding(max_len, d_model) if learned else None
        if not learned:
            self.register_buffer("table", sinusoid_table(max_len, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings for positions offset … offset+length-1: (length, D)."""
        table = self.learned.weight if self.learned is not None else self.table
        if offset + length > table.size(0):
            raise ValueError(f"sequence of {offset + length} positions exceeds model.max_len={table.size(0)}")
        return table[offset : offset + length]


class InputEmbedding(nn.Module):
    """§3.4 + §3.5: token embedding × √d_model + positional encoding, then dropout (§5.4)."""

    def __init__(self, tokens: nn.Embedding, positions: PositionalEncoding, dropout: float):
        super().__init__()
        self.tokens, self.positions = tokens, positions
        self.scale = math.sqrt(tokens.embedding_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        x = self.tokens(ids) * self.scale + self.positions(ids.size(1), offset)  # (B, T, D)
        return self.dropout(x)


class Residual(nn.Module):
    """§3.1 / §5.4: LayerNorm(x + Dropout(Sublayer(x))) (post-norm, the paper), or
    x + Dropout(Sublayer(LayerNorm(x))) (pre-norm, a named option)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def before(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def after(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_out)
        return x if self.pre_norm else self.norm(x)


class EncoderLayer(nn.Module):
    """§3.1: multi-head self-attention, then the position-wise FFN, each in a residual block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff)
        self.res_attn = Residual(cfg.d_model, cfg.dropout, pre)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        h = self.res_attn.before(x)
        a, weights = self.self_attn(h, self.self_attn.project_kv(h), mask, need_weights=need_weights)
        x = self.res_attn.after(x, a)
        x = self.res_ffn.after(x, self.ffn(self.res_ffn.before(x)))
        return x, weights


class DecoderLayer(nn.Module):
    """§3.1: masked self-attention, encoder–decoder attention, FFN, each in a residual block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff)
        self.res_self = Residual(cfg.d_model, cfg.dropout, pre)
        self.res_cross = Residual(cfg.d_model, cfg.dropout, pre)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(
        self,
        x: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        kv_buffer: tuple[Tensor, Tensor] | None = None,
        offset: int = 0,
        need_weights: bool = False,
        beam: int = 1,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None, Tensor | None]:
        """x (N, T, D) target positions offset … offset+T-1. ``kv_buffer``: self-attention K
        (N, H, C, d_k) and V (N, H, C, d_v) buffers whose positions < offset hold the earlier
        tokens; the new K/V are written into them in place at offset … offset+T-1. Returns the
        output, the K/V attended to (N, H, offset+T, ·) and the weights."""
        h = self.res_self.before(x)
        k, v = self.self_attn.project_kv(h)  # (N, H, T, d_k), (N, H, T, d_v)
        if kv_buffer is not None:
            end = offset + x.size(1)
            kv_buffer[0][:, :, offset:end] = k
            kv_buffer[1][:, :, offset:end] = v
            k, v = kv_buffer[0][:, :, :end], kv_buffer[1][:, :, :end]  # (N, H, offset+T, ·), views
        t_q, t_k = x.size(1), k.size(2)
        # One new query may see every cached key; a whole sequence uses the kernel's own
        # causal mask; a few new queries against a cache need it aligned bottom-right.
        mask = causal_mask(t_q, t_k, x.device) if 1 < t_q < t_k else None
        a, self_w = self.self_attn(h, (k, v), mask, is_causal=t_q == t_k > 1, need_weights=need_weights)
        x = self.res_self.after(x, a)
        a, cross_w = self.cross_attn(self.res_cross.before(x), cross_kv, src_mask, need_weights=need_weights, beam=beam)
        x = self.res_cross.after(x, a)
        x = self.res_ffn.after(x, self.ffn(self.res_ffn.before(x)))
        return x, (k, v), self_w, cross_w


KVBuffers = tuple[tuple[Tensor, Tensor], ...]  # per decoder layer: K (R, H, C, d_k), V (R, H, C, d_v)


def _allocate(like: KVBuffers, rows: int, capacity: int) -> KVBuffers:
    """Uninitialised buffers shaped as ``like`` but with ``rows`` rows and ``capacity`` positions:
    only the positions a cache has filled are ever read."""
    return tuple(
        (k.new_empty(rows, k.size(1), capacity, k.size(3)), v.new_empty(rows, v.size(1), capacity, v.size(3)))
        for k, v in like
    )


def _gather_rows(source: Tensor, index: Tensor, out: Tensor) -> None:
    """out = source[index] (rows), written into ``out`` in place. ``out=`` takes no part in
    autograd, so a source that carries a graph is gathered, then copied."""
    if source.requires_grad:
        out.copy_(source.index_select(0, index))
    else:
        torch.index_select(source, 0, index, out=out)


@dataclass(frozen=True)
class DecoderCache:
    """State for incremental decoding, passed in and returned (never kept on a module).

    self_kv:  per layer, buffers K (R, H, C, d_k) and V (R, H, C, d_v) of capacity C positions,
              allocated once per batch: rows 0 … rows-1 and positions 0 … length-1 hold the
              self-attention K/V of the tokens decoded so far; ``decode`` writes the next
              positions in place instead of concatenating
    spare:    buffers of the same shapes that ``reorder`` gathers the kept rows into, after
              which the two sets swap roles: beam reordering copies only the filled positions of
              the kept rows, and no step allocates
    cross_kv: per layer, K (B, H, S, d_k) and V (B, H, S, d_v) of the encoder output, computed once
    src_mask: (B, 1, 1, S) attention mask of the source
    rows:     N = B × beam, the decoder rows in use
    length:   t, the positions filled
    beam:     decoder rows per sentence (N = B × beam); rows of a sentence are contiguous

    A cache shares its buffers with the caches made from it, and those write into them: only
    the newest one is valid, as in a search that always replaces its state by the one returned.
    """

    self_kv: KVBuffers
    spare: KVBuffers
    cross_kv: tuple[tuple[Tensor, Tensor], ...]
    src_mask: Tensor
    rows: int
    length: int = 0
    beam: int = 1

    @property
    def capacity(self) -> int:
        return self.self_kv[0][0].size(2)

    def filled(self) -> KVBuffers:
        """Per layer, the K (N, H, t, d_k) and V (N, H, t, d_v) decoded so far (views)."""
        return tuple((k[: self.rows, :, : self.length], v[: self.rows, :, : self.length]) for k, v in self.self_kv)

    def in_use(self) -> KVBuffers:
        """Per layer, the buffers' rows in use, K (N, H, C, d_k) and V (N, H, C, d_v) (views)."""
        return tuple((k[: self.rows], v[: self.rows]) for k, v in self.self_kv)

    def reserve(self, steps: int) -> DecoderCache:
        """A cache with room for ``steps`` more positions: this one when they fit, else one with
        buffers of at least twice the capacity (amortised O(1) per position) holding the same state."""
        needed = self.length + steps
        if needed <= self.capacity:
            return self
        capacity = max(needed, 2 * self.capacity, 16)
        self_kv, spare = _allocate(self.self_kv, self.rows, capacity), _allocate(self.self_kv, self.rows, capacity)
        for (new_k, new_v), (k, v) in zip(self_kv, self.filled()):
            new_k[:, :, : self.length], new_v[:, :, : self.length] = k, v
        return replace(self, self_kv=self_kv, spare=spare)

    def advance(self, steps: int) -> DecoderCache:
        """The cache after ``decode`` wrote ``steps`` new positions into its buffers."""
        return replace(self, length=self.length + steps)

    def reorder(self, index: Tensor) -> DecoderCache:
        """Keep decoder rows ``index`` (beam reordering; finished sentences dropped).

        Self-attention K/V: the filled positions of the kept rows are gathered into the spare
        buffers (nothing is copied when ``index`` keeps the first rows in place). Cross-attention
        K/V are per sentence, so they are only gathered when the set of sentences changes
        (docs/pitfalls.md: "Cache reordering"), never copied per beam.
        """
        n = index.numel()
        if torch.equal(index, torch.arange(n, device=index.device)):
            self_kv, spare = self.self_kv, self.spare
        else:
            if n > self.self_kv[0][0].size(0):  # more rows than allocated: the beams of a fresh search
                self_kv, spare = _allocate(self.self_kv, n, self.capacity), _allocate(self.self_kv, n, self.capacity)
            else:
                self_kv, spare = self.spare, self.self_kv
            if self.length:
                for (new_k, new_v), (k, v) in zip(self_kv, self.filled()):
                    _gather_rows(k, index, new_k[:n, :, : self.length])
                    _gather_rows(v, index, new_v[:n, :, : self.length])
        sentences, counts = torch.unique_consecutive(index // self.beam, return_counts=True)
        beam = n // max(sentences.numel(), 1)
        if sentences.numel() and not bool((counts == beam).all()):
            raise ValueError("reorder: each sentence must keep the same number of contiguous rows")
        n_sentences = self.src_mask.size(0)
        unchanged = sentences.numel() == n_sentences and bool(
            (sentences == torch.arange(n_sentences, device=index.device)).all()
        )
        cross_kv, src_mask = self.cross_kv, self.src_mask
        if not unchanged:
            cross_kv = tuple((k.index_select(0, sentences), v.index_select(0, sentences)) for k, v in self.cross_kv)
            src_mask = self.src_mask.index_select(0, sentences)
        return DecoderCache(self_kv, spare, cross_kv, src_mask, n, self.length, beam)


class Encoder(nn.Module):
    """§3.1: a stack of N identical layers over the embedded source."""

    def __init__(self, cfg: ModelConfig, embedding: InputEmbedding):
        super().__init__()
        self.embedding = embedding
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        # Pre-norm leaves the residual stream un-normalised: normalise it once at the top.
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()

    def forward(self, src: Tensor, src_mask: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        mask = padding_mask(src_mask)  # (B, 1, 1, S)
        x = self.embedding(src)  # (B, S, D)
        weights = []
        for layer in self.layers:
            x, w = layer(x, mask, need_weights)
            weights.append(w)
        return self.final_norm(x), (weights if need_weights else None)


class Decoder(nn.Module):
    """§3.1: a stack of N identical layers; position i attends to outputs before i only."""

    def __init__(self, cfg: ModelConfig, embedding: InputEmbedding):
        super().__init__()
        self.embedding = embedding
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()

    def forward(
        self,
        tgt: Tensor,
        cross_kv: list[tuple[Tensor, Tensor]] | tuple,
        src_mask: Tensor,
        kv_buffers: KVBuffers | None = None,
        offset: int = 0,
        need_weights: bool = False,
        beam: int = 1,
    ) -> tuple[Tensor, dict[str, list[Tensor]] | None]:
        """tgt (N, T): target positions offset … offset+T-1; ``kv_buffers`` (one per layer, see
        ``DecoderLayer``) hold the earlier positions and receive the new ones."""
        x = self.embedding(tgt, offset)  # (N, T, D)
        self_ws, cross_ws = [], []
        for i, layer in enumerate(self.layers):
            x, _, sw, cw = layer(
                x, cross_kv[i], src_mask, kv_buffers[i] if kv_buffers else None, offset, need_weights, beam
            )
            self_ws.append(sw)
            cross_ws.append(cw)
        weights = {"self": self_ws, "cross": cross_ws} if need_weights else None
        return self.final_norm(x), weights


class Transformer(nn.Module):
    """§3: encoder–decoder with (by default) one embedding matrix shared by the source
    embedding, the target embedding and the pre-softmax projection (§3.4)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        learned = cfg.positional == "learned"
        tgt_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        src_tokens = tgt_tokens if cfg.tie_embeddings == "all" else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Encoder(
            cfg, InputEmbedding(src_tokens, PositionalEncoding(cfg.max_len, cfg.d_model, learned), cfg.dropout)
        )
        self.decoder = Decoder(
            cfg, InputEmbedding(tgt_tokens, PositionalEncoding(cfg.max_len, cfg.d_model, learned), cfg.dropout)
        )
        self.out_proj = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings != "none":
            self.out_proj.weight = tgt_tokens.weight

    def reset_parameters(self) -> None:
        """The paper does not say. ``init=xavier``: Xavier-uniform projections and zero biases
        (as tensor2tensor and fairseq); embeddings N(0, d_model^-0.5), so that × √d_model gives
        unit scale and, tied to the output layer, logits start small (docs/pitfalls.md: "Tied embedding scale").
        ``init=normal``: every matrix and embedding N(0, init_std), biases zero (BERT, GPT-2,
        Marian): sublayers start small against the residual stream."""
        normal = self.cfg.init == "normal"
        for name, p in self.named_parameters():
            if p.dim() > 1 and "tokens" not in name and "learned" not in name:
                if normal:
                    nn.init.normal_(p, mean=0.0, std=self.cfg.init_std)
                else:
                    nn.init.xavier_uniform_(p)
            elif p.dim() == 1 and name.endswith("bias"):
                nn.init.zeros_(p)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                std = self.cfg.init_std if normal else self.cfg.d_model**-0.5
                nn.init.normal_(module.weight, mean=0.0, std=std)

    def encode(self, src: Tensor, src_mask: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """src (B, S) ids, src_mask (B, S) True = real -> memory (B, S, D) and, on request,
        per-layer self-attention weights (B, H, S, S)."""
        return self.encoder(src, src_mask, need_weights)

    def init_cache(self, memory: Tensor, src_mask: Tensor, *, capacity: int = 0) -> DecoderCache:
        """Project the encoder output once for every decoder layer's cross-attention, and allocate
        self-attention buffers for ``capacity`` positions (a search passes its step limit, so
        that they never grow; without it they grow by doubling)."""
        cross_kv = tuple(layer.cross_attn.project_kv(memory) for layer in self.decoder.layers)
        n, h, d_k, d_v = memory.size(0), self.cfg.n_heads, self.cfg.head_dim_k, self.cfg.head_dim_v
        self_kv = tuple(
            (memory.new_empty(n, h, capacity, d_k), memory.new_empty(n, h, capacity, d_v)) for _ in self.decoder.layers
        )
        return DecoderCache(self_kv, _allocate(self_kv, n, capacity), cross_kv, padding_mask(src_mask), n)

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor | None = None,
        src_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, DecoderCache | None, dict[str, list[Tensor]] | None]:
        """Without a cache: tgt_in (B, T) is the whole shifted target (teacher forcing).
        With a cache (from ``init_cache``): tgt_in (N, T_new) holds only the new tokens, whose
        self-attention K/V are written into the cache's buffers; the advanced cache is returned
        (it supersedes the one passed in). Logits (·, T, V)."""
        if cache is None:
            if memory is None or src_mask is None:
                raise ValueError("decode needs memory and src_mask when no cache is given")
            cross_kv = [layer.cross_attn.project_kv(memory) for layer in self.decoder.layers]
            x, weights = self.decoder(tgt_in, cross_kv, padding_mask(src_mask), need_weights=need_weights)
            return self.out_proj(x), None, weights
        if tgt_in.size(0) != cache.rows:
            raise ValueError(f"decode: {tgt_in.size(0)} rows of new tokens for a cache of {cache.rows} rows")
        steps = tgt_in.size(1)
        cache = cache.reserve(steps)
        x, weights = self.decoder(
            tgt_in, cache.cross_kv, cache.src_mask, cache.in_use(), cache.length, need_weights, cache.beam
        )
        return self.out_proj(x), cache.advance(steps), weights

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V). Given ``tgt_mask`` (B, T) (True = real token), only
        the real target positions are projected to the vocabulary: (n, V), row order as
        ``tgt_mask.nonzero()`` — training never spends the largest matmul on padding."""
        memory, _ = self.encode(src, src_mask)
        if tgt_mask is None:
            logits, _, _ = self.decode(tgt_in, memory, src_mask)
            return logits
        cross_kv = [layer.cross_attn.project_kv(memory) for layer in self.decoder.layers]
        hidden, _ = self.decoder(tgt_in, cross_kv, padding_mask(src_mask))  # (B, T, D)
        return self.out_proj(hidden[tgt_mask])  # (n, V)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied matrices counted once, as in the paper's Table 3)."""
    return sum(p.numel() for p in model.parameters())

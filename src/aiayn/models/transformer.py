"""The Transformer of §3 of *Attention Is All You Need*, one class per idea of the paper.

The pieces live beside it: ``layers`` (linear maps, Eq. 2's FFN, §3.4–3.5 embeddings and
positions, the residual block), ``attention`` (§3.2: masks, Eq. 1, multi-head attention) and
``cache`` (the decoder's state for one-token-at-a-time decoding).

Shape legend (batch-first everywhere):
    B    batch (sentences)            N    decoder rows = B × beam
    S    source length                T    target length (queries)
    D    d_model                      V    vocabulary size
    H    heads                        d_k, d_v   per-head key / value width

Masks have one polarity, everywhere: True = this key may be attended to.
"""

from __future__ import annotations

from torch import Tensor, nn

from aiayn.config import ModelConfig
from aiayn.models.attention import MultiHeadAttention, causal_mask, padding_mask
from aiayn.models.cache import DecoderCache, KVBuffers
from aiayn.models.layers import InputEmbedding, Linear, PositionalEncoding, PositionwiseFeedForward, Residual

CrossKV = tuple[tuple[Tensor, Tensor], ...]  # per decoder layer: K (B, H, S, d_k), V (B, H, S, d_v)


class EncoderLayer(nn.Module):
    """§3.1: multi-head self-attention, then the position-wise FFN, each in a residual block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff)
        self.res_attn = Residual(cfg.d_model, cfg.dropout, pre_norm=pre)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, pre_norm=pre)

    def forward(self, x: Tensor, mask: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
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
        self.res_self = Residual(cfg.d_model, cfg.dropout, pre_norm=pre)
        self.res_cross = Residual(cfg.d_model, cfg.dropout, pre_norm=pre)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, pre_norm=pre)

    def forward(
        self,
        x: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        *,
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
        h = self.res_cross.before(x)
        a, cross_w = self.cross_attn(h, cross_kv, src_mask, need_weights=need_weights, beam=beam)
        x = self.res_cross.after(x, a)
        x = self.res_ffn.after(x, self.ffn(self.res_ffn.before(x)))
        return x, (k, v), self_w, cross_w


class Encoder(nn.Module):
    """§3.1: a stack of N identical layers over the embedded source."""

    def __init__(self, cfg: ModelConfig, embedding: InputEmbedding):
        super().__init__()
        self.embedding = embedding
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        # Pre-norm leaves the residual stream un-normalised: normalise it once at the top.
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()

    def forward(
        self, src: Tensor, src_mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        mask = padding_mask(src_mask)  # (B, 1, 1, S)
        x = self.embedding(src)  # (B, S, D)
        weights = []
        for layer in self.layers:
            x, w = layer(x, mask, need_weights=need_weights)
            weights.append(w)
        return self.final_norm(x), (weights if need_weights else None)


class Decoder(nn.Module):
    """§3.1: a stack of N identical layers; position i attends to outputs before i only."""

    def __init__(self, cfg: ModelConfig, embedding: InputEmbedding):
        super().__init__()
        self.embedding = embedding
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()

    def project_memory(self, memory: Tensor) -> CrossKV:
        """Every layer's encoder–decoder attention K/V of the encoder output (B, S, D), computed
        once per sentence however many target positions and beams read them."""
        return tuple(layer.cross_attn.project_kv(memory) for layer in self.layers)

    def forward(
        self,
        tgt: Tensor,
        cross_kv: CrossKV,
        src_mask: Tensor,
        *,
        kv_buffers: KVBuffers | None = None,
        offset: int = 0,
        need_weights: bool = False,
        beam: int = 1,
    ) -> tuple[Tensor, dict[str, list[Tensor]] | None]:
        """tgt (N, T): target positions offset … offset+T-1; ``kv_buffers`` (one per layer, see
        ``DecoderLayer``) hold the earlier positions and receive the new ones."""
        x = self.embedding(tgt, offset=offset)  # (N, T, D)
        self_ws, cross_ws = [], []
        for i, layer in enumerate(self.layers):
            kv_buffer = kv_buffers[i] if kv_buffers else None
            x, _, sw, cw = layer(
                x, cross_kv[i], src_mask, kv_buffer=kv_buffer, offset=offset, need_weights=need_weights, beam=beam
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
            cfg, InputEmbedding(src_tokens, PositionalEncoding(cfg.max_len, cfg.d_model, learned=learned), cfg.dropout)
        )
        self.decoder = Decoder(
            cfg, InputEmbedding(tgt_tokens, PositionalEncoding(cfg.max_len, cfg.d_model, learned=learned), cfg.dropout)
        )
        self.out_proj = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings != "none":
            self.out_proj.weight = tgt_tokens.weight

    def reset_parameters(self) -> None:
        """The paper does not say. ``init=xavier``: Xavier-uniform projections and zero biases
        (as tensor2tensor and fairseq); embeddings N(0, d_model^-0.5), so that × √d_model gives
        unit scale and, tied to the output layer, logits start small (docs/pitfalls.md: "Tied
        embedding scale").
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

    def encode(
        self, src: Tensor, src_mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        """src (B, S) ids, src_mask (B, S) True = real -> memory (B, S, D) and, on request,
        per-layer self-attention weights (B, H, S, S)."""
        return self.encoder(src, src_mask, need_weights=need_weights)

    def init_cache(self, memory: Tensor, src_mask: Tensor, *, capacity: int = 0) -> DecoderCache:
        """Project the encoder output once for every decoder layer's cross-attention, and allocate
        self-attention buffers for ``capacity`` positions (a search passes its step limit, so
        that they never grow; without it they grow by doubling)."""
        # Contiguous (B, H, S, d): a decoding step's attention then reads each head's keys and values
        # in place, where the strided view of the projection would be copied at every step.
        cross_kv = tuple((k.contiguous(), v.contiguous()) for k, v in self.decoder.project_memory(memory))
        return DecoderCache.start(cross_kv, padding_mask(src_mask), capacity=capacity)

    def decode(
        self,
        tgt_in: Tensor,
        *,
        memory: Tensor | None = None,
        src_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, DecoderCache | None, dict[str, list[Tensor]] | None]:
        """Without a cache: tgt_in (B, T) is the whole shifted target (teacher forcing) against
        ``memory`` and ``src_mask``. With a cache (from ``init_cache``): tgt_in (N, T_new) holds
        only the new tokens, whose self-attention K/V are written into the cache's buffers; the
        advanced cache is returned (it supersedes the one passed in). Logits (·, T, V)."""
        if cache is None:
            if memory is None or src_mask is None:
                raise ValueError("decode needs memory and src_mask when no cache is given")
            cross_kv = self.decoder.project_memory(memory)
            x, weights = self.decoder(tgt_in, cross_kv, padding_mask(src_mask), need_weights=need_weights)
            return self.out_proj(x), None, weights
        if tgt_in.size(0) != cache.rows:
            raise ValueError(f"decode: {tgt_in.size(0)} rows of new tokens for a cache of {cache.rows} rows")
        steps = tgt_in.size(1)
        cache = cache.reserve(steps)
        x, weights = self.decoder(
            tgt_in,
            cache.cross_kv,
            cache.src_mask,
            kv_buffers=cache.in_use(),
            offset=cache.length,
            need_weights=need_weights,
            beam=cache.beam,
        )
        return self.out_proj(x), cache.advance(steps), weights

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V). Given ``tgt_mask`` (B, T) (True = real token), only
        the real target positions are projected to the vocabulary: (n, V), row order as
        ``tgt_mask.nonzero()`` — training never spends the largest matmul on padding."""
        memory, _ = self.encode(src, src_mask)
        hidden, _ = self.decoder(tgt_in, self.decoder.project_memory(memory), padding_mask(src_mask))  # (B, T, D)
        return self.out_proj(hidden if tgt_mask is None else hidden[tgt_mask])  # (B, T, V) or (n, V)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied matrices counted once, as in the paper's Table 3)."""
    return sum(p.numel() for p in model.parameters())

"""The convolutional baseline of Table 1 and 2: ConvS2S.

Gehring, Auli, Grangier, Yarats and Dauphin (2017), *Convolutional Sequence to Sequence
Learning*: token embeddings plus learned position embeddings (§3.1); in both encoder and
decoder, a stack of convolutions each followed by a gated linear unit and a residual connection
(§3.2); the decoder's convolutions see only earlier positions, and every decoder layer attends to
the encoder on its own (multi-step attention, §3.3). Sums are scaled by √0.5 to keep the variance
(§3.4), and the attention's output by m·√(1/m) for a source of m tokens.

Weight normalisation (§3.4) is left out: the paper needs it for its Nesterov SGD at learning
rate 0.25; aiayn trains every network with the same Adam and schedule, under which the paper's
initialisation (§3.5, ``reset_parameters``) trains stably without it, and plain weights keep
checkpoint averaging and the int8 and packed inference copies exactly as for the Transformer.
The paper's scaling of the encoder's gradients by the number of attention layers is left out
for the same reason.

Shape legend (batch-first everywhere; a convolution reads channels first, (·, C, T)):
    B    batch (sentences)            N    decoder rows = B × beam
    S    source length                T    target length
    E    d_model: embeddings          C    conv_channels
    k    conv_kernel                  L    conv_layers       V    vocabulary size

Masks have one polarity, everywhere: True = real token / may be attended to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.config import ModelConfig
from aiayn.models.attention import dot_attention, padding_mask
from aiayn.models.cache import kept_sentences
from aiayn.models.layers import Linear, PositionalEncoding

SQRT_HALF = math.sqrt(0.5)  # §3.4: a sum of two terms of equal variance, scaled back to that variance


@dataclass(frozen=True)
class ConvCache:
    """The decoder's state between steps, passed in and returned (never kept on a module).

    windows:  per layer (N, k − 1, C), the last k − 1 inputs of its causal convolution (zeros
              before the first token, as the convolution's own border)
    keys:     (B, S, E) the encoder output z, once per sentence
    values:   (B, S, E) (z + e) × √m: what attention sums, its scaling by m·√(1/m) included
    src_mask: (B, 1, 1, S) attention mask of the source
    length:   target positions decoded so far (the next position's embedding)
    beam:     decoder rows per sentence; rows of a sentence are contiguous
    """

    windows: tuple[Tensor, ...]
    keys: Tensor
    values: Tensor
    src_mask: Tensor
    length: int = 0
    beam: int = 1

    @property
    def rows(self) -> int:
        return self.windows[0].size(0)

    def reorder(self, index: Tensor) -> ConvCache:
        """Keep decoder rows ``index``; the encoder output is gathered only when the set of
        sentences changes, never per beam."""
        sentences, beam = kept_sentences(index, self.beam, self.src_mask.size(0))
        windows = tuple(w.index_select(0, index) for w in self.windows)
        keys, values, src_mask = self.keys, self.values, self.src_mask
        if sentences is not None:
            keys, values, src_mask = (x.index_select(0, sentences) for x in (keys, values, src_mask))
        return ConvCache(windows, keys, values, src_mask, self.length, beam)


class Embedding(nn.Module):
    """§3.1: e = (w_1 + p_1, …): a token embedding plus a learned position embedding, then dropout."""

    def __init__(self, tokens: nn.Embedding, max_len: int, dropout: float):
        super().__init__()
        self.tokens = tokens
        self.positions = PositionalEncoding(max_len, tokens.embedding_dim, learned=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, *, offset: int = 0) -> Tensor:
        return self.dropout(self.tokens(ids) + self.positions(ids.size(1), offset=offset))  # (B, T, E)


class GatedConv(nn.Module):
    """§3.2: a convolution to 2C channels, then the gated linear unit v([A B]) = A ⊗ σ(B) (Eq. 1
    of Dauphin et al., 2017) back to C. It pads nothing: the caller gives it the border."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, 2 * channels, kernel)

    def forward(self, x: Tensor) -> Tensor:
        """x (·, T + k − 1, C) -> (·, T, C)."""
        y = self.conv(x.transpose(1, 2))  # (·, 2C, T)
        return F.glu(y, dim=1).transpose(1, 2)  # (·, T, C)


class Encoder(nn.Module):
    """§3.2: E -> C, L gated convolutions with residuals, C -> E. Before each convolution the
    padding is set to zero, the convolution's own border, so it changes no real output."""

    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding):
        super().__init__()
        self.embedding = Embedding(tokens, cfg.max_len, cfg.dropout)
        self.in_proj = Linear(cfg.d_model, cfg.conv_channels)
        self.layers = nn.ModuleList(GatedConv(cfg.conv_channels, cfg.conv_kernel) for _ in range(cfg.conv_layers))
        self.out_proj = Linear(cfg.conv_channels, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.border = (cfg.conv_kernel - 1) // 2

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) ids -> the encoder output z (B, S, E) and the input embeddings e (B, S, E)."""
        e = self.embedding(src)  # (B, S, E)
        x = self.in_proj(e)  # (B, S, C)
        padding = ~src_mask[:, :, None]  # (B, S, 1)
        for layer in self.layers:
            h = self.dropout(x).masked_fill(padding, 0.0)
            h = F.pad(h, (0, 0, self.border, self.border))  # (B, S + k − 1, C): zero borders
            x = (layer(h) + x) * SQRT_HALF  # (B, S, C)
        return self.out_proj(x), e


class DecoderLayer(nn.Module):
    """§3.2–3.3: a causal gated convolution, then its own attention over the encoder:
    d = (W_d h + b_d + g) √0.5, a = softmax(d · z), c = Σ a (z + e) m√(1/m), h' = (h + W c) √0.5,
    and the residual (h' + x) √0.5."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.conv = GatedConv(cfg.conv_channels, cfg.conv_kernel)
        self.attn_in = Linear(cfg.conv_channels, cfg.d_model)  # W_d, b_d
        self.attn_out = Linear(cfg.d_model, cfg.conv_channels)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, g: Tensor, window: Tensor, cache: ConvCache, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """x (N, T, C) this layer's input at T new positions, g (N, T, E) their target embeddings,
        window (N, k − 1, C) the inputs before them. Returns the output (N, T, C), the window for
        the next positions and, on request, the weights (N, 1, T, S)."""
        h = torch.cat([window, self.dropout(x)], dim=1)  # (N, k − 1 + T, C): position t sees t − k + 1 … t
        window = h[:, h.size(1) - window.size(1) :]  # (N, k − 1, C), the newest inputs
        h = self.conv(h)  # (N, T, C)
        d = (self.attn_in(h) + g) * SQRT_HALF  # (N, T, E)
        c, weights = dot_attention(
            d, cache.keys, cache.values, cache.src_mask, beam=cache.beam, need_weights=need_weights
        )  # (N, T, E)
        h = (h + self.attn_out(c)) * SQRT_HALF
        return (h + x) * SQRT_HALF, window, weights


class Decoder(nn.Module):
    """§3.2: E -> C, L layers of causal convolution and attention, C -> E."""

    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding):
        super().__init__()
        self.embedding = Embedding(tokens, cfg.max_len, cfg.dropout)
        self.in_proj = Linear(cfg.d_model, cfg.conv_channels)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.conv_layers))
        self.out_proj = Linear(cfg.conv_channels, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.window = cfg.conv_kernel - 1

    def start(self, memory: Tensor, src_mask: Tensor) -> ConvCache:
        """Empty windows for one decoder row per sentence; the encoder output split into the
        attention's keys and its values scaled by √m."""
        keys, values = memory.chunk(2, dim=-1)  # (B, S, E) each
        m = src_mask.sum(dim=1).clamp(min=1).to(values.dtype)  # (B,) real source tokens
        values = values * m.sqrt()[:, None, None]  # m·√(1/m) = √m
        windows = tuple(
            memory.new_zeros(memory.size(0), self.window, layer.conv.conv.in_channels) for layer in self.layers
        )
        return ConvCache(windows, keys, values, padding_mask(src_mask))

    def forward(
        self, tgt: Tensor, cache: ConvCache, *, need_weights: bool = False
    ) -> tuple[Tensor, ConvCache, list[Tensor]]:
        """tgt (N, T) the next T inputs -> the top layer (N, T, E), the advanced cache and, on
        request, each layer's attention weights (N, 1, T, S)."""
        g = self.embedding(tgt, offset=cache.length)  # (N, T, E)
        x = self.in_proj(g)  # (N, T, C)
        windows, weights = [], []
        for layer, window in zip(self.layers, cache.windows):
            x, window, w = layer(x, g, window, cache, need_weights=need_weights)
            windows.append(window)
            weights.append(w)
        cache = replace(cache, windows=tuple(windows), length=cache.length + tgt.size(1))
        return self.dropout(self.out_proj(x)), cache, weights


class ConvSeq2Seq(nn.Module):
    """ConvS2S with the Transformer's interface (``encode``, ``init_cache``, ``decode``,
    ``forward``; docs/architecture.md). Embeddings are shared as ``tie_embeddings`` says: the top
    layer is projected to d_model, so the softmax can reuse the target embedding matrix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        tgt_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        src_tokens = tgt_tokens if cfg.tie_embeddings == "all" else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Encoder(cfg, src_tokens)
        self.decoder = Decoder(cfg, tgt_tokens)
        self.out_proj = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings != "none":
            self.out_proj.weight = tgt_tokens.weight

    def reset_parameters(self) -> None:
        """§3.5, with the dropout retention probability p: embeddings N(0, 0.1); a layer feeding a
        gated linear unit N(0, √(4p / n)), every other one N(0, √(p / n)) for n inputs; biases
        zero (``model.init`` names the Transformer's initialisations and is not read here)."""
        p = 1.0 - self.cfg.dropout
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, (nn.Linear, nn.Conv1d)):
                fan_in = module.weight[0].numel()
                gain = 4.0 if isinstance(module, nn.Conv1d) else 1.0
                nn.init.normal_(module.weight, 0.0, math.sqrt(gain * p / fan_in))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def encode(
        self, src: Tensor, src_mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        """src (B, S) ids, src_mask (B, S) -> memory (B, S, 2E): z and z + e side by side (§3.3
        scores with z and sums z + e), and on request the encoder's attention weights: none, an
        empty list (it has no self-attention)."""
        z, e = self.encoder(src, src_mask)
        return torch.cat([z, z + e], dim=-1), ([] if need_weights else None)  # (B, S, 2E)

    def init_cache(self, memory: Tensor, src_mask: Tensor, *, capacity: int = 0) -> ConvCache:
        """The decoder's initial state. ``capacity`` is accepted for the common interface: the
        windows are k − 1 positions whatever the length."""
        return self.decoder.start(memory, src_mask)

    def decode(
        self,
        tgt_in: Tensor,
        *,
        memory: Tensor | None = None,
        src_mask: Tensor | None = None,
        cache: ConvCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, ConvCache | None, dict[str, list[Tensor]] | None]:
        """Without a cache: tgt_in (B, T) is the whole shifted target (teacher forcing, every
        position at once) against ``memory`` and ``src_mask``. With a cache: tgt_in (N, T_new)
        holds only the new tokens and the advanced cache is returned. Logits (·, T, V); weights
        {"self": [], "cross": L × (N, 1, T, S)}."""
        given = cache
        if cache is None:
            if memory is None or src_mask is None:
                raise ValueError("decode needs memory and src_mask when no cache is given")
            cache = self.init_cache(memory, src_mask)
        elif tgt_in.size(0) != cache.rows:
            raise ValueError(f"decode: {tgt_in.size(0)} rows of new tokens for a cache of {cache.rows} rows")
        hidden, cache, w = self.decoder(tgt_in, cache, need_weights=need_weights)
        weights = {"self": [], "cross": w} if need_weights else None
        return self.out_proj(hidden), (cache if given is not None else None), weights

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V), or (n, V) for the real target positions of ``tgt_mask``."""
        memory, _ = self.encode(src, src_mask)
        hidden, _, _ = self.decoder(tgt_in, self.init_cache(memory, src_mask))  # (B, T, E)
        return self.out_proj(hidden if tgt_mask is None else hidden[tgt_mask])  # (B, T, V) or (n, V)

"""The recurrent baseline of Table 1 and 2: an attentional LSTM encoder–decoder.

Luong, Pham and Manning (2015), *Effective Approaches to Attention-based Neural Machine
Translation*: stacked LSTMs, global attention with the ``general`` score (§3.1, Eq. 8), the
attentional vector h̃_t = tanh(W_c [c_t; h_t]) (Eq. 5) that predicts the next word (Eq. 6) and,
input feeding (§3.3), is fed to the next step beside its word. Wu et al. (2016), GNMT §3: the
first encoder layer reads the sentence in both directions, the layers above in one.

Every LSTM is ``torch.nn.LSTM`` (one fused kernel over the layers of a stack). Input feeding
makes the decoder step through the target one position at a time, in training too: the
sequential computation §1 and Table 1 of *Attention Is All You Need* hold against recurrence.

Shape legend (batch-first everywhere):
    B    batch (sentences)            N    decoder rows = B × beam
    S    source length                T    target length
    E    d_model: embeddings and h̃    W    rnn_hidden: LSTM width
    L    rnn_layers                   V    vocabulary size

Masks have one polarity, everywhere: True = real token / may be attended to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from aiayn.config import ModelConfig
from aiayn.models.attention import dot_attention, padding_mask
from aiayn.models.cache import kept_sentences
from aiayn.models.layers import Linear


@dataclass(frozen=True)
class RecurrentCache:
    """The decoder's state between steps, passed in and returned (never kept on a module).

    h, c:     (L, N, W) each LSTM layer's hidden and cell state
    feed:     (N, E) the last attentional vector h̃ (input feeding, Luong §3.3)
    memory:   (B, S, W) the encoder's top layer h̄_s, once per sentence
    keys:     (B, S, W) W_a h̄_s, the ``general`` score's keys, computed once
    src_mask: (B, 1, 1, S) attention mask of the source
    beam:     decoder rows per sentence; rows of a sentence are contiguous
    """

    h: Tensor
    c: Tensor
    feed: Tensor
    memory: Tensor
    keys: Tensor
    src_mask: Tensor
    beam: int = 1

    @property
    def rows(self) -> int:
        return self.feed.size(0)

    def reorder(self, index: Tensor) -> RecurrentCache:
        """Keep decoder rows ``index`` (beam reordering; finished sentences dropped). The
        per-sentence memory is gathered only when the set of sentences changes, never per beam."""
        sentences, beam = kept_sentences(index, self.beam, self.src_mask.size(0))
        h, c, feed = self.h.index_select(1, index), self.c.index_select(1, index), self.feed.index_select(0, index)
        memory, keys, src_mask = self.memory, self.keys, self.src_mask
        if sentences is not None:
            memory, keys, src_mask = (x.index_select(0, sentences) for x in (memory, keys, src_mask))
        return RecurrentCache(h, c, feed, memory, keys, src_mask, beam)


class Encoder(nn.Module):
    """GNMT §3: a bidirectional LSTM layer of two W/2 halves, then a stack of L − 1 LSTM layers.
    Sentences are packed to their lengths, so the backward direction starts at each sentence's
    last real token and padding changes no real state."""

    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding):
        super().__init__()
        w = cfg.rnn_hidden
        self.tokens = tokens
        self.dropout = nn.Dropout(cfg.dropout)
        self.bidirectional = nn.LSTM(cfg.d_model, w // 2, batch_first=True, bidirectional=True)
        layers = cfg.rnn_layers - 1
        # nn.LSTM's dropout acts between its layers; the one before the stack is applied in forward.
        self.stack = nn.LSTM(w, w, layers, batch_first=True, dropout=cfg.dropout * (layers > 1)) if layers else None

    def forward(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """src (B, S) ids, src_mask (B, S) -> h̄ (B, S, W), zero at padding."""
        lengths = src_mask.sum(dim=1).clamp(min=1).cpu()  # a row of padding alone reads one position
        x = self.dropout(self.tokens(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        packed, _ = self.bidirectional(packed)  # forward and backward halves side by side, W wide
        if self.stack is not None:
            packed, _ = self.stack(packed._replace(data=self.dropout(packed.data)))
        memory, _ = pad_packed_sequence(packed, batch_first=True, total_length=src.size(1))  # (B, S, W)
        return memory


class Decoder(nn.Module):
    """Luong §3: a stack of L LSTM layers reading [y_{t-1}; h̃_{t-1}] (input feeding), global
    attention over h̄ with score(h_t, h̄_s) = h_tᵀ W_a h̄_s, and h̃_t = tanh(W_c [c_t; h_t]).

    It starts from zero states: the source reaches it through attention alone, so the encoder's
    bidirectional layer need not match the decoder's shape."""

    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding):
        super().__init__()
        e, w = cfg.d_model, cfg.rnn_hidden
        self.tokens = tokens
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(2 * e, w, cfg.rnn_layers, batch_first=True, dropout=cfg.dropout * (cfg.rnn_layers > 1))
        self.w_a = Linear(w, w, bias=False)  # Eq. 8, general
        self.w_c = Linear(2 * w, e, bias=False)  # Eq. 5

    def start(self, memory: Tensor, src_mask: Tensor) -> RecurrentCache:
        """Zero states for one decoder row per sentence; the keys W_a h̄_s computed once."""
        b, layers, w = memory.size(0), self.lstm.num_layers, self.lstm.hidden_size
        zeros = memory.new_zeros(layers, b, w)  # (L, B, W)
        feed = memory.new_zeros(b, self.w_c.out_features)  # (B, E)
        return RecurrentCache(zeros, zeros, feed, memory, self.w_a(memory), padding_mask(src_mask))

    def forward(
        self, tgt: Tensor, cache: RecurrentCache, *, need_weights: bool = False
    ) -> tuple[Tensor, RecurrentCache, list[Tensor]]:
        """tgt (N, T) the next T inputs -> h̃ (N, T, E), the advanced cache and, on request, the
        attention weights (N, 1, T, S) of the T steps."""
        y = self.dropout(self.tokens(tgt))  # (N, T, E)
        h, c, feed = cache.h, cache.c, cache.feed
        outputs, weights = [], []
        for t in range(tgt.size(1)):  # input feeding: step t reads h̃ of step t − 1
            x = torch.cat([y[:, t], feed], dim=-1)[:, None]  # (N, 1, 2E)
            top, (h, c) = self.lstm(x, (h, c))  # (N, 1, W)
            context, w = dot_attention(  # (N, 1, W)
                top, cache.keys, cache.memory, cache.src_mask, beam=cache.beam, need_weights=need_weights
            )
            feed = self.dropout(torch.tanh(self.w_c(torch.cat([context, top], dim=-1))))[:, 0]  # (N, E)
            outputs.append(feed)
            weights.append(w)
        hidden = torch.stack(outputs, dim=1)  # (N, T, E)
        return hidden, replace(cache, h=h, c=c, feed=feed), weights


class RecurrentSeq2Seq(nn.Module):
    """The attentional LSTM with the Transformer's interface (``encode``, ``init_cache``,
    ``decode``, ``forward``; docs/architecture.md). Embeddings are shared as ``tie_embeddings``
    says: h̃ is d_model wide, so the softmax can reuse the target embedding matrix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        tgt_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        src_tokens = tgt_tokens if cfg.tie_embeddings == "all" else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Encoder(cfg, src_tokens)
        self.decoder = Decoder(cfg, tgt_tokens)
        self.out_proj = Linear(cfg.d_model, cfg.vocab_size)  # Eq. 6, with a softmax bias (init_output_bias)
        self.reset_parameters()
        if cfg.tie_embeddings != "none":
            self.out_proj.weight = tgt_tokens.weight

    def reset_parameters(self) -> None:
        """Luong §4.1: every parameter uniform in [−0.1, 0.1] (``model.init`` names the
        Transformer's initialisations and is not read here)."""
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    @torch.no_grad()
    def init_output_bias(self, counts: Tensor) -> None:
        """The softmax bias set to the log unigram distribution of the training targets (add-one
        counts, ``counts`` (V,)), so that the untrained model already predicts word frequencies.

        Why: h̃ = tanh(·) is bounded, and under Adam a bias from ±0.1 moves about the learning rate
        per update, far too slowly to reach the unigram's log-probabilities (a spread of ~10 nats).
        The network reached them instead by driving h̃ into saturation (71 % of its units at
        |h̃| > 0.95 after 200 updates), where tanh passes almost no gradient, and it sat at the
        unigram's loss for hundreds of updates (docs/claims.md, "the LSTM's slow start").
        Trainers call it on a fresh run, never on a resumed one."""
        smoothed = counts.double() + 1.0
        self.out_proj.bias.copy_((smoothed / smoothed.sum()).log())

    def encode(
        self, src: Tensor, src_mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        """src (B, S) ids, src_mask (B, S) -> memory (B, S, W) and, on request, the encoder's
        attention weights: none, an empty list (it has no self-attention)."""
        return self.encoder(src, src_mask), ([] if need_weights else None)

    def init_cache(self, memory: Tensor, src_mask: Tensor, *, capacity: int = 0) -> RecurrentCache:
        """The decoder's initial state. ``capacity`` is accepted for the common interface: a
        recurrent state has no positions to reserve."""
        return self.decoder.start(memory, src_mask)

    def decode(
        self,
        tgt_in: Tensor,
        *,
        memory: Tensor | None = None,
        src_mask: Tensor | None = None,
        cache: RecurrentCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, RecurrentCache | None, dict[str, list[Tensor]] | None]:
        """Without a cache: tgt_in (B, T) is the whole shifted target (teacher forcing) against
        ``memory`` and ``src_mask``. With a cache: tgt_in (N, T_new) holds only the new tokens and
        the advanced cache is returned. Logits (·, T, V); weights {"self": [], "cross": [(N, 1, T, S)]}."""
        given = cache
        if cache is None:
            if memory is None or src_mask is None:
                raise ValueError("decode needs memory and src_mask when no cache is given")
            cache = self.init_cache(memory, src_mask)
        elif tgt_in.size(0) != cache.rows:
            raise ValueError(f"decode: {tgt_in.size(0)} rows of new tokens for a cache of {cache.rows} rows")
        hidden, cache, w = self.decoder(tgt_in, cache, need_weights=need_weights)
        weights = {"self": [], "cross": [torch.cat(w, dim=2)]} if need_weights else None  # (N, 1, T, S)
        return self.out_proj(hidden), (cache if given is not None else None), weights

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V), or (n, V) for the real target positions of ``tgt_mask``."""
        cache = self.init_cache(self.encoder(src, src_mask), src_mask)
        hidden, _, _ = self.decoder(tgt_in, cache)  # (B, T, E)
        return self.out_proj(hidden if tgt_mask is None else hidden[tgt_mask])  # (B, T, V) or (n, V)

"""The decoder's state for incremental decoding (§3.2.3's masked self-attention, one token at a time).

Shape legend: B sentences, N decoder rows = B × beam, H heads, C positions of room,
t positions filled, S source length, d_k / d_v per-head key / value width.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

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


def kept_sentences(index: Tensor, beam: int, n_sentences: int) -> tuple[Tensor | None, int]:
    """What a reorder keeping decoder rows ``index`` (N,) keeps of a cache's per-sentence state
    (``beam`` contiguous rows per sentence, ``n_sentences`` of them): the sentences' indices, or
    None when it keeps every sentence in order (nothing to gather), and the new rows per sentence."""
    sentences, counts = torch.unique_consecutive(index // beam, return_counts=True)
    rows = index.numel() // max(sentences.numel(), 1)
    if sentences.numel() and not bool((counts == rows).all()):
        raise ValueError("reorder: each sentence must keep the same number of contiguous rows")
    unchanged = sentences.numel() == n_sentences and bool(
        (sentences == torch.arange(n_sentences, device=index.device)).all()
    )
    return (None if unchanged else sentences), rows


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

    @classmethod
    def start(cls, cross_kv: tuple[tuple[Tensor, Tensor], ...], src_mask: Tensor, *, capacity: int = 0) -> DecoderCache:
        """An empty cache, one decoder row per sentence of ``cross_kv``, with room for ``capacity``
        positions (more are added by doubling when a decode step needs them)."""
        rows = src_mask.size(0)
        self_kv = _allocate(cross_kv, rows, capacity)
        return cls(self_kv, _allocate(self_kv, rows, capacity), cross_kv, src_mask, rows)

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
        sentences, beam = kept_sentences(index, self.beam, self.src_mask.size(0))
        cross_kv, src_mask = self.cross_kv, self.src_mask
        if sentences is not None:
            cross_kv = tuple((k.index_select(0, sentences), v.index_select(0, sentences)) for k, v in self.cross_kv)
            src_mask = self.src_mask.index_select(0, sentences)
        return DecoderCache(self_kv, spare, cross_kv, src_mask, n, self.length, beam)

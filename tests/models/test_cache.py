"""cache.py: incremental decoding with the cache equals full decoding at every step, through
beam reorders and sentences leaving the batch; the in-place buffers equal a torch.cat cache."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from modelkit import TOL, make_model, max_diff, random_batch

from aiayn.config import BOS_ID, EOS_ID
from aiayn.inference.search import beam_search, greedy_search
from aiayn.models.attention import padding_mask
from aiayn.models.cache import DecoderCache
from aiayn.models.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# Incremental decoding with the cache


def full_logits(
    model: Transformer, prefix: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor, need_weights: bool = False
):
    logits, _, weights = model.decode(prefix, memory=memory, src_mask=src_mask, need_weights=need_weights)
    return logits, weights


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_incremental_decoding_equals_full_decoding(norm: str) -> None:
    model = make_model(seed=2, norm=norm)
    src, src_mask = random_batch([9, 6, 3], 9)
    tgt, _ = random_batch([10, 10, 10], 10, seed=5)
    tgt[:, 0] = BOS_ID
    memory, _ = model.encode(src, src_mask)
    full, _ = full_logits(model, tgt, memory, src_mask)

    # One token at a time.
    cache = model.init_cache(memory, src_mask)
    for t in range(tgt.size(1)):
        step, cache, _ = model.decode(tgt[:, t : t + 1], cache=cache)
        assert cache.length == t + 1
        assert max_diff(step[:, 0], full[:, t]) < TOL

    # Chunks of several new tokens against a longer cache (bottom-right causal mask).
    cache, start = model.init_cache(memory, src_mask), 0
    for size in (3, 1, 4, 2):
        chunk, cache, _ = model.decode(tgt[:, start : start + size], cache=cache)
        assert max_diff(chunk, full[:, start : start + size]) < TOL
        start += size


def test_greedy_with_cache_equals_greedy_without() -> None:
    model = make_model(seed=3)
    src, src_mask = random_batch([8, 5, 2], 8)
    memory, _ = model.encode(src, src_mask)
    cached = torch.full((3, 1), BOS_ID)
    uncached = cached.clone()
    cache = model.init_cache(memory, src_mask)
    for _ in range(12):
        step, cache, _ = model.decode(cached[:, -1:], cache=cache)
        full, _ = full_logits(model, uncached, memory, src_mask)
        assert max_diff(step[:, -1], full[:, -1]) < TOL
        cached = torch.cat([cached, step[:, -1].argmax(-1, keepdim=True)], dim=1)
        uncached = torch.cat([uncached, full[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, uncached)


def test_reordered_cache_equals_full_decoding_of_its_rows() -> None:
    model = make_model(seed=4)
    b, k = 3, 2
    src, src_mask = random_batch([7, 4, 6], 7)
    memory, _ = model.encode(src, src_mask)
    g = torch.Generator().manual_seed(6)
    rows = torch.cat([torch.full((b, 1), BOS_ID), torch.randint(4, 50, (b, 2), generator=g)], dim=1)  # (B, 3)
    sentence = torch.arange(b)  # row -> sentence
    cache = model.init_cache(memory, src_mask)
    _, cache, _ = model.decode(rows, cache=cache)

    def step_and_check(cache, rows, sentence):
        new = torch.randint(4, 50, (rows.size(0), 1), generator=g)
        rows = torch.cat([rows, new], dim=1)
        logits, cache, weights = model.decode(new, cache=cache, need_weights=True)
        ref, ref_w = full_logits(model, rows, memory[sentence], src_mask[sentence], need_weights=True)
        assert max_diff(logits[:, 0], ref[:, -1]) < TOL
        for kind in ("self", "cross"):
            for mine, theirs in zip(weights[kind], ref_w[kind]):
                assert max_diff(mine[:, :, 0], theirs[:, :, -1]) < TOL
        return cache, rows

    expand = torch.arange(b).repeat_interleave(k)  # beams: rows of a sentence are contiguous
    cache, rows, sentence = cache.reorder(expand), rows[expand], sentence[expand]
    assert cache.beam == k and cache.cross_kv[0][0].size(0) == b  # encoder K/V not copied per beam
    cache, rows = step_and_check(cache, rows, sentence)

    permute = torch.tensor([1, 0, 2, 3, 5, 4])  # beams swap places within sentences 0 and 2
    cache, rows, sentence = cache.reorder(permute), rows[permute], sentence[permute]
    cache, rows = step_and_check(cache, rows, sentence)

    drop = torch.tensor([0, 1, 4, 5])  # sentence 1 finished
    cache, rows, sentence = cache.reorder(drop), rows[drop], sentence[drop]
    assert cache.cross_kv[0][0].size(0) == 2 and cache.src_mask.size(0) == 2
    cache, rows = step_and_check(cache, rows, sentence)
    step_and_check(cache, rows, sentence)


class CatCache:
    """The reference cache: self-attention K/V grown by ``torch.cat`` at every step and gathered
    whole at every reorder, the encoder output repeated per decoder row (no buffers written in
    place, no beams folded), run through the layers' sublayers directly."""

    def __init__(self, model: Transformer, memory: torch.Tensor, src_mask: torch.Tensor, kv=None):
        self.model, self.memory, self.src_mask = model, memory, src_mask
        n, h, cfg = memory.size(0), model.cfg.n_heads, model.cfg
        self.kv = kv or [
            (memory.new_zeros(n, h, 0, cfg.head_dim_k), memory.new_zeros(n, h, 0, cfg.head_dim_v))
            for _ in model.decoder.layers
        ]

    def reorder(self, index: torch.Tensor) -> CatCache:
        return CatCache(
            self.model, self.memory[index], self.src_mask[index], [(k[index], v[index]) for k, v in self.kv]
        )

    def step(self, prefix: torch.Tensor) -> tuple[torch.Tensor, CatCache]:
        model, kv = self.model, []
        x = model.decoder.embedding(prefix[:, -1:], offset=self.kv[0][0].size(2))  # (N, 1, D)
        for layer, (past_k, past_v) in zip(model.decoder.layers, self.kv):
            h = layer.res_self.before(x)
            k, v = layer.self_attn.project_kv(h)
            kv.append((torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)))
            x = layer.res_self.after(x, layer.self_attn(h, kv[-1])[0])
            cross = layer.cross_attn.project_kv(self.memory)
            x = layer.res_cross.after(
                x, layer.cross_attn(layer.res_cross.before(x), cross, padding_mask(self.src_mask))[0]
            )
            x = layer.res_ffn.after(x, layer.ffn(layer.res_ffn.before(x)))
        logits = model.out_proj(model.decoder.final_norm(x))[:, -1]  # (N, V)
        return logits.log_softmax(-1), CatCache(model, self.memory, self.src_mask, kv)


@dataclass
class Lockstep:
    """aiayn's cache and the reference, reordered together."""

    cache: DecoderCache
    ref: CatCache

    def reorder(self, index: torch.Tensor) -> Lockstep:
        return Lockstep(self.cache.reorder(index), self.ref.reorder(index))


@pytest.mark.parametrize("capacity", [0, 13], ids=["growing", "preallocated"])
@pytest.mark.parametrize("beam", [1, 3], ids=["greedy", "beam"])
def test_in_place_cache_equals_the_torch_cat_cache_at_every_step(beam: int, capacity: int) -> None:
    """Through beam reorders and sentences leaving the batch (their own max_len, or EOS): the same
    log-probabilities and the same K/V at every step, and the same tokens chosen."""
    model = make_model(seed=7, n_decoder_layers=3)
    src, src_mask = random_batch([9, 4, 7, 2], 9)
    max_len = torch.tensor([4, 13, 8, 11])
    rows_per_step = []

    def step(prefix: torch.Tensor, both: Lockstep) -> tuple[torch.Tensor, Lockstep]:
        logits, cache, _ = model.decode(prefix[:, -1:], cache=both.cache)
        ref_log_probs, ref = both.ref.step(prefix)
        log_probs = logits[:, -1].log_softmax(-1)
        assert max_diff(log_probs, ref_log_probs) < TOL
        assert cache.length == prefix.size(1) and cache.rows == prefix.size(0)
        for (k, v), (ref_k, ref_v) in zip(cache.filled(), ref.kv):
            assert max_diff(k, ref_k) <= 1e-6 and max_diff(v, ref_v) <= 1e-6
        rows_per_step.append(prefix.size(0))
        return log_probs, Lockstep(cache, ref)

    def search(step_fn, state):
        if beam == 1:
            return [[h] for h in greedy_search(step_fn, state, 4, BOS_ID, EOS_ID, max_len)]
        return beam_search(step_fn, state, 4, BOS_ID, EOS_ID, max_len, beam_size=beam, nbest=beam)

    with torch.no_grad():
        memory, _ = model.encode(src, src_mask)
        both = Lockstep(model.init_cache(memory, src_mask, capacity=capacity), CatCache(model, memory, src_mask))
        ours = search(step, both)
        reference = search(lambda prefix, ref: ref.step(prefix), CatCache(model, memory, src_mask))
    assert [[h.tokens for h in nb] for nb in ours] == [[h.tokens for h in nb] for nb in reference]
    assert len(set(rows_per_step)) >= 3  # sentences left the batch at different steps

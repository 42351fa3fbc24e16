"""model.py (§3) against independent references: torch.nn's attention and Transformer layers,
float64 gradcheck, hand-written mask tables, the PE formula of §3.5, and Table 3's parameter column."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aiayn.attention import MultiHeadAttention, ScaledDotProductAttention, causal_mask, padding_mask
from aiayn.cache import DecoderCache
from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError, ModelConfig, load_config
from aiayn.layers import Linear, PositionalEncoding, sinusoid_table
from aiayn.loss import label_smoothed_cross_entropy
from aiayn.model import DecoderLayer, EncoderLayer, Transformer, count_parameters
from aiayn.search import beam_search, greedy_search

D, H, D_FF = 32, 4, 64
TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


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


# ---------------------------------------------------------------------------------------------
# Multi-head attention against torch.nn.MultiheadAttention


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


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "key-padding"])
def test_multihead_attention_matches_torch(need_weights: bool, masked: bool) -> None:
    ours, ref = mha_pair()
    g = torch.Generator().manual_seed(3)
    b, t, s = 3, 5, 7
    q_in = torch.randn(b, t, D, generator=g, requires_grad=True)
    k_in = torch.randn(b, s, D, generator=g, requires_grad=True)
    v_in = torch.randn(b, s, D, generator=g, requires_grad=True)
    keys = lengths_to_mask([7, 4, 1], s) if masked else torch.ones(b, s, dtype=torch.bool)

    k, _ = ours.project_kv(k_in)
    _, v = ours.project_kv(v_in)
    out, weights = ours(q_in, (k, v), padding_mask(keys) if masked else None, need_weights=need_weights)
    # nn's polarity is the opposite: True = ignore this key (docs/pitfalls.md: "Mask polarity").
    ref_out, ref_w = ref(
        q_in, k_in, v_in, key_padding_mask=~keys if masked else None, need_weights=True, average_attn_weights=False
    )

    assert max_diff(out, ref_out) < TOL
    if need_weights:
        assert weights.shape == (b, H, t, s)
        assert max_diff(weights, ref_w) < TOL
        assert torch.all(weights.masked_select(~keys[:, None, None, :].expand_as(weights)) == 0)
    else:
        assert weights is None

    grad = torch.randn(out.shape, generator=g)
    ours_grads = torch.autograd.grad(out, (q_in, k_in, v_in), grad)
    ref_grads = torch.autograd.grad(ref_out, (q_in, k_in, v_in), grad)
    for mine, theirs in zip(ours_grads, ref_grads):
        assert max_diff(mine, theirs) < TOL


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
def test_causal_self_attention_matches_torch(need_weights: bool) -> None:
    ours, ref = mha_pair(seed=1)
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(4))
    out, weights = ours(x, ours.project_kv(x), None, is_causal=True, need_weights=need_weights)
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)  # nn: True = not allowed
    ref_out, ref_w = ref(x, x, x, attn_mask=future, need_weights=True, average_attn_weights=False)
    assert max_diff(out, ref_out) < TOL
    if need_weights:
        assert max_diff(weights, ref_w) < TOL
        assert torch.all(weights[..., future] == 0)


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
def test_causal_flag_combined_with_padding_mask(need_weights: bool) -> None:
    """is_causal together with a key-padding mask must apply both
    (docs/pitfalls.md: "Causal and padding masks together"); right padding,
    so every query still sees key 0."""
    ours, ref = mha_pair(seed=2)
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(5))
    keys = lengths_to_mask([6, 3], 6)
    out, _ = ours(x, ours.project_kv(x), padding_mask(keys), is_causal=True, need_weights=need_weights)
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    ref_out, _ = ref(x, x, x, attn_mask=future, key_padding_mask=~keys)
    assert max_diff(out, ref_out) < TOL


def test_causal_flag_with_fewer_queries_than_keys_is_aligned_bottom_right() -> None:
    """The fused and explicit paths must agree for T_q < T_k: the explicit path aligns the
    causal mask bottom-right (docs/pitfalls.md: "Causal alignment"), so must the fused one."""
    ours, _ = mha_pair(seed=3)
    g = torch.Generator().manual_seed(6)
    x, source = torch.randn(2, 2, D, generator=g), torch.randn(2, 5, D, generator=g)
    kv = ours.project_kv(source)
    fused, _ = ours(x, kv, None, is_causal=True)
    explicit, _ = ours(x, kv, None, is_causal=True, need_weights=True)
    assert max_diff(fused, explicit) < TOL


# ---------------------------------------------------------------------------------------------
# Encoder and decoder layers against torch.nn.TransformerEncoderLayer / TransformerDecoderLayer


def randomize_layer_(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * D**-0.5
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def copy_linear_(dst: nn.Linear, src: nn.Linear) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


def copy_norm_(dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_layer_matches_torch(norm: str, need_weights: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(D, H, D_FF, dropout=0.0, batch_first=True, norm_first=norm == "pre")
    randomize_layer_(ref, 10)
    ours = EncoderLayer(small_cfg(norm=norm))
    copy_mha_(ours.self_attn, ref.self_attn)
    copy_linear_(ours.ffn.w_1, ref.linear1)
    copy_linear_(ours.ffn.w_2, ref.linear2)
    copy_norm_(ours.res_attn.norm, ref.norm1)
    copy_norm_(ours.res_ffn.norm, ref.norm2)
    ours.eval(), ref.eval()

    mask = lengths_to_mask([6, 4, 2], 6)
    # requires_grad keeps nn off its inference fast path, which treats padded rows differently.
    x = torch.randn(3, 6, D, generator=torch.Generator().manual_seed(7), requires_grad=True)
    out, _ = ours(x, padding_mask(mask), need_weights=need_weights)
    ref_out = ref(x, src_key_padding_mask=~mask)
    assert max_diff(out, ref_out) < TOL
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(8))
    assert max_diff(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref_out, x, grad)[0]) < TOL


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_layer_matches_torch(norm: str, need_weights: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(D, H, D_FF, dropout=0.0, batch_first=True, norm_first=norm == "pre")
    randomize_layer_(ref, 11)
    ours = DecoderLayer(small_cfg(norm=norm))
    copy_mha_(ours.self_attn, ref.self_attn)
    copy_mha_(ours.cross_attn, ref.multihead_attn)
    copy_linear_(ours.ffn.w_1, ref.linear1)
    copy_linear_(ours.ffn.w_2, ref.linear2)
    copy_norm_(ours.res_self.norm, ref.norm1)
    copy_norm_(ours.res_cross.norm, ref.norm2)
    copy_norm_(ours.res_ffn.norm, ref.norm3)
    ours.eval(), ref.eval()

    g = torch.Generator().manual_seed(9)
    src_mask = lengths_to_mask([7, 5, 1], 7)
    x = torch.randn(3, 5, D, generator=g, requires_grad=True)
    memory = torch.randn(3, 7, D, generator=g, requires_grad=True)
    out, (k, v), self_w, cross_w = ours(
        x, ours.cross_attn.project_kv(memory), padding_mask(src_mask), need_weights=need_weights
    )
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5)
    ref_out = ref(x, memory, tgt_mask=tgt_mask, memory_key_padding_mask=~src_mask)
    assert max_diff(out, ref_out) < TOL
    assert k.shape == (3, H, 5, D // H) and v.shape == (3, H, 5, D // H)
    if need_weights:
        assert self_w.shape == (3, H, 5, 5) and cross_w.shape == (3, H, 5, 7)
    grad = torch.randn(out.shape, generator=g)
    for mine, theirs in zip(
        torch.autograd.grad(out, (x, memory), grad), torch.autograd.grad(ref_out, (x, memory), grad)
    ):
        assert max_diff(mine, theirs) < TOL


# ---------------------------------------------------------------------------------------------
# float64 gradcheck


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
def test_gradcheck_scaled_dot_product_attention(need_weights: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 4, generator=g, dtype=torch.float64, requires_grad=True) for n in (3, 5, 5))
    mask = padding_mask(lengths_to_mask([5, 2], 5))
    attention = ScaledDotProductAttention()
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, mask, need_weights=need_weights)[0], (q, k, v))


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
def test_gradcheck_multihead_attention_with_padding(need_weights: bool) -> None:
    torch.manual_seed(4)
    ours = MultiHeadAttention(8, 2, 4, 4).double()
    randomize_(ours, 4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    source = torch.randn(2, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    mask = padding_mask(lengths_to_mask([4, 2], 4))
    assert torch.autograd.gradcheck(
        lambda x, s: ours(x, ours.project_kv(s), mask, need_weights=need_weights)[0], (x, source)
    )


# ---------------------------------------------------------------------------------------------
# Masks


def test_padding_mask_table() -> None:
    mask = torch.tensor(
        [
            [True, True, False, False],
            [True, True, True, True],
            [True, False, False, False],
            [False, False, False, False],
        ]
    )
    expected = torch.tensor(
        [[True, True, False, False], [True, True, True, True], [True, False, False, False], [True, True, True, True]]
    )  # all padding: attend everywhere, no NaN
    out = padding_mask(mask)
    assert out.shape == (4, 1, 1, 4) and out.dtype == torch.bool
    assert torch.equal(out[:, 0, 0, :], expected)


def test_causal_mask_tables() -> None:
    assert torch.equal(causal_mask(3, 3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    # Two new queries after a cache of three keys: aligned bottom-right (docs/pitfalls.md: "Causal alignment").
    assert torch.equal(causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    assert torch.equal(causal_mask(1, 4), torch.ones(1, 4, dtype=torch.bool))


@pytest.mark.parametrize("dtype, wide_tol", [(torch.float32, 1e-5), (torch.float64, 1e-6)], ids=["float32", "float64"])
def test_padding_never_changes_real_outputs(dtype: torch.dtype, wide_tol: float) -> None:
    """Other ids under padding change no real output (1e-6; in practice bit-identical). Extra padding
    columns change the shapes the kernels reduce over, so float32 differs by a few ulps there."""
    model = make_model().to(dtype)
    src, src_mask = random_batch([9, 5, 2], 9, seed=1)
    tgt, tgt_mask = random_batch([6, 3, 4], 6, seed=2)
    tgt[:, 0] = BOS_ID
    memory, _ = model.encode(src, src_mask)
    logits = model(src, tgt, src_mask)

    # Other token ids under the source padding.
    noisy = torch.where(src_mask, src, torch.randint(4, 50, src.shape, generator=torch.Generator().manual_seed(3)))
    memory2, _ = model.encode(noisy, src_mask)
    assert max_diff(memory2[src_mask], memory[src_mask]) < 1e-6
    assert max_diff(model(noisy, tgt, src_mask)[tgt_mask], logits[tgt_mask]) < 1e-6

    # Extra padding columns on both sides.
    wide_src = F.pad(src, (0, 4), value=PAD_ID)
    wide_mask = F.pad(src_mask, (0, 4), value=False)
    wide_tgt = F.pad(tgt, (0, 3), value=PAD_ID)
    memory3, _ = model.encode(wide_src, wide_mask)
    assert max_diff(memory3[:, :9][src_mask], memory[src_mask]) < wide_tol
    wide_logits = model(wide_src, wide_tgt, wide_mask)
    assert max_diff(wide_logits[:, :6][tgt_mask], logits[tgt_mask]) < wide_tol


def test_all_padding_source_row_gives_no_nan() -> None:
    model = make_model().train()
    src, src_mask = random_batch([5, 0, 3], 5)
    tgt, _ = random_batch([4, 4, 2], 4, seed=2)
    for need_weights in (False, True):
        memory, _ = model.encode(src, src_mask, need_weights=need_weights)
        logits, _, _ = model.decode(tgt, memory=memory, src_mask=src_mask, need_weights=need_weights)
        assert torch.isfinite(logits).all()
        loss, _, _ = label_smoothed_cross_entropy(logits, tgt, 0.1)
        model.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_train_mode_without_dropout_equals_eval(norm: str) -> None:
    model = make_model(norm=norm)
    src, src_mask = random_batch([7, 3], 7)
    tgt, _ = random_batch([5, 2], 5, seed=2)
    evaluated = model.eval()(src, tgt, src_mask)
    trained = model.train()(src, tgt, src_mask)
    assert max_diff(evaluated, trained) < 1e-6


def test_explicit_attention_path_gives_the_same_logits() -> None:
    model = make_model()
    src, src_mask = random_batch([8, 4], 8)
    tgt, _ = random_batch([6, 6], 6, seed=2)
    fused = model(src, tgt, src_mask)
    memory, _ = model.encode(src, src_mask, need_weights=True)
    explicit, _, _ = model.decode(tgt, memory=memory, src_mask=src_mask, need_weights=True)
    assert max_diff(fused, explicit) < TOL


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


def test_attention_weights_equal_the_explicit_computation() -> None:
    model = make_model(seed=5)
    src, src_mask = random_batch([6, 3], 6)
    tgt, _ = random_batch([5, 5], 5, seed=2)
    memory, enc_w = model.encode(src, src_mask, need_weights=True)
    _, _, dec_w = model.decode(tgt, memory=memory, src_mask=src_mask, need_weights=True)
    assert len(enc_w) == 2 and len(dec_w["self"]) == 2 and len(dec_w["cross"]) == 2

    def explicit(attn: MultiHeadAttention, queries, keys, allowed) -> torch.Tensor:
        q = attn.w_q(queries).view(*queries.shape[:2], H, -1).transpose(1, 2)  # (B, H, T, d_k)
        k = attn.w_k(keys).view(*keys.shape[:2], H, -1).transpose(1, 2)  # (B, H, S, d_k)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1)

    layer = model.encoder.layers[0]
    x_src = model.encoder.embedding(src)
    assert max_diff(enc_w[0], explicit(layer.self_attn, x_src, x_src, src_mask[:, None, None, :])) < TOL
    layer = model.decoder.layers[0]
    x_tgt = model.decoder.embedding(tgt)
    future_ok = causal_mask(5, 5)
    assert max_diff(dec_w["self"][0], explicit(layer.self_attn, x_tgt, x_tgt, future_ok)) < TOL
    after_self = layer.res_self.norm(
        x_tgt + layer.self_attn(x_tgt, layer.self_attn.project_kv(x_tgt), is_causal=True)[0]
    )
    cross = explicit(layer.cross_attn, after_self, memory, src_mask[:, None, None, :])
    assert max_diff(dec_w["cross"][0], cross) < TOL

    for weights, allowed in [(w, src_mask[:, None, None, :]) for w in enc_w + dec_w["cross"]] + [
        (w, future_ok) for w in dec_w["self"]
    ]:
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-6)
        assert torch.all(weights.masked_select(~allowed.expand_as(weights)) == 0)


# ---------------------------------------------------------------------------------------------
# Positions and embeddings


def test_sinusoid_table_matches_the_formula() -> None:
    d = 6
    table = sinusoid_table(10, d)
    assert table.shape == (10, d)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))  # interleaved, not halves
    hand = {
        (1, 0): math.sin(1.0),
        (1, 1): math.cos(1.0),
        (2, 2): math.sin(2 / 10000 ** (2 / 6)),
        (2, 3): math.cos(2 / 10000 ** (2 / 6)),
        (3, 4): math.sin(3 / 10000 ** (4 / 6)),
        (9, 5): math.cos(9 / 10000 ** (4 / 6)),
    }
    for (pos, i), value in hand.items():
        assert table[pos, i].item() == pytest.approx(value, abs=1e-7)
    # Large positions stay accurate (docs/pitfalls.md: "Sinusoid layout"): the table is computed in float64.
    assert sinusoid_table(1001, 4)[1000, 0].item() == pytest.approx(math.sin(1000.0), abs=1e-6)
    odd = sinusoid_table(3, 5)
    assert odd[2, 4].item() == pytest.approx(math.sin(2 / 10000 ** (4 / 5)), abs=1e-7)


def test_positional_encoding_offset_and_max_len() -> None:
    pe = PositionalEncoding(10, 6)
    assert torch.equal(pe(3, offset=4), sinusoid_table(10, 6)[4:7])
    assert not list(pe.parameters())
    with pytest.raises(AiaynError, match="max_len"):
        pe(11)
    with pytest.raises(AiaynError, match="max_len"):
        pe(5, offset=6)
    model = make_model(max_len=8)
    ids = torch.full((1, 9), 5)
    with pytest.raises(AiaynError, match="max_len"):
        model.encode(ids, ids != PAD_ID)


def test_learned_positions_are_trainable() -> None:
    pe = PositionalEncoding(10, 6, learned=True)
    params = list(pe.parameters())
    assert len(params) == 1 and params[0].shape == (10, 6) and params[0].requires_grad
    pe(3, offset=2).sum().backward()
    assert torch.equal(params[0].grad.sum(-1), torch.tensor([0, 0, 6, 6, 6, 0, 0, 0, 0, 0.0]))
    with pytest.raises(AiaynError):
        pe(11)
    model = make_model(positional="learned")
    names = [n for n, _ in model.named_parameters() if "positions" in n]
    assert len(names) == 2
    assert count_parameters(model) == count_parameters(make_model()) + 2 * 64 * D


def test_input_embedding_scales_tokens_and_adds_positions() -> None:
    model = make_model()
    ids = torch.tensor([[5, 7, 9]])
    emb = model.decoder.embedding
    expected = emb.tokens.weight[ids] * math.sqrt(D) + sinusoid_table(64, D)[:3]
    assert max_diff(emb(ids), expected) < 1e-6
    assert max_diff(emb(ids, offset=2), emb.tokens.weight[ids] * math.sqrt(D) + sinusoid_table(64, D)[2:5]) < 1e-6


def test_embedding_tying() -> None:
    everything = make_model(tie_embeddings="all")
    src_w, tgt_w = everything.encoder.embedding.tokens.weight, everything.decoder.embedding.tokens.weight
    assert src_w is tgt_w and everything.out_proj.weight is tgt_w

    decoder = make_model(tie_embeddings="decoder")
    src_w, tgt_w = decoder.encoder.embedding.tokens.weight, decoder.decoder.embedding.tokens.weight
    assert src_w is not tgt_w and decoder.out_proj.weight is tgt_w

    none = make_model(tie_embeddings="none")
    src_w, tgt_w, out_w = (
        none.encoder.embedding.tokens.weight,
        none.decoder.embedding.tokens.weight,
        none.out_proj.weight,
    )
    assert src_w is not tgt_w and out_w is not tgt_w and out_w is not src_w

    shared = 50 * D
    assert count_parameters(decoder) == count_parameters(everything) + shared
    assert count_parameters(none) == count_parameters(everything) + 2 * shared


def test_logits_at_init_are_small_for_base_dims() -> None:
    """Tied embeddings start at N(0, d_model^-0.5): × √d_model gives unit-scale inputs and the
    tied output layer gives logits of about unit scale, not √d_model (docs/pitfalls.md: "Tied embedding scale")."""
    torch.manual_seed(0)
    cfg = load_config("base", overrides=["n_layers=2", "dropout=0.0"]).model
    model = Transformer(cfg).eval()
    weight = model.out_proj.weight
    assert weight.std().item() == pytest.approx(512**-0.5, rel=0.02)
    src, src_mask = random_batch([12, 8], 12, vocab=cfg.vocab_size)
    tgt, _ = random_batch([10, 10], 10, vocab=cfg.vocab_size, seed=2)
    with torch.no_grad():
        logits = model(src, tgt, src_mask)
    std = logits.std().item()
    print(f"logit std at init (base dims): {std:.3f}")
    assert 0.3 < std < 5.0


# ---------------------------------------------------------------------------------------------
# Table 3 parameter counts

# (row, overrides of the base preset, paper params in millions; blank = as base: 65)
TABLE_3 = [
    ("base", [], 65),
    ("A h=1", ["n_heads=1", "d_k=512", "d_v=512"], 65),
    ("A h=4", ["n_heads=4", "d_k=128", "d_v=128"], 65),
    ("A h=16", ["n_heads=16", "d_k=32", "d_v=32"], 65),
    ("A h=32", ["n_heads=32", "d_k=16", "d_v=16"], 65),
    ("B d_k=16", ["d_k=16"], 58),
    ("B d_k=32", ["d_k=32"], 60),
    ("C N=2", ["n_layers=2"], 36),
    ("C N=4", ["n_layers=4"], 50),
    ("C N=8", ["n_layers=8"], 80),
    ("C d_model=256", ["d_model=256", "d_k=32", "d_v=32"], 28),
    ("C d_model=1024", ["d_model=1024", "d_k=128", "d_v=128"], 168),
    ("C d_ff=1024", ["d_ff=1024"], 53),
    ("C d_ff=4096", ["d_ff=4096"], 90),
    ("D P_drop=0.0", ["dropout=0.0"], 65),
    ("D P_drop=0.2", ["dropout=0.2"], 65),
    ("D eps_ls=0.0", ["label_smoothing=0.0"], 65),
    ("D eps_ls=0.2", ["label_smoothing=0.2"], 65),
    ("E learned positions", ["positional=learned"], 65),
]


def meta_count(preset: str, overrides: list[str]) -> int:
    cfg = load_config(preset, overrides=["vocab_size=37000", *overrides])
    with torch.device("meta"):
        return count_parameters(Transformer(cfg.model))


@pytest.mark.parametrize(
    "row, overrides, paper", TABLE_3 + [("big", "big", 213)], ids=[r[0] for r in TABLE_3] + ["big"]
)
def test_table_3_parameter_counts(row: str, overrides, paper: int) -> None:
    preset, overrides = ("big", []) if overrides == "big" else ("base", overrides)
    count = meta_count(preset, overrides)
    assert abs(count / 1e6 - paper) <= max(3.0, 0.03 * paper), f"{row}: {count / 1e6:.1f}M vs paper {paper}M"


def test_base_and_big_counts() -> None:
    assert round(meta_count("base", []) / 1e5) == 631
    assert round(meta_count("big", []) / 1e6) == 214


def test_forward_with_tgt_mask_projects_only_real_positions() -> None:
    model = make_model().eval()
    src, src_mask = random_batch([5, 3], 6)
    tgt, tgt_mask = random_batch([4, 2], 5, seed=2)
    with torch.no_grad():
        full = model(src, tgt, src_mask)  # (B, T, V)
        real = model(src, tgt, src_mask, tgt_mask)  # (n, V)
    assert real.shape == (6, full.size(-1))
    assert max_diff(real, full[tgt_mask]) < 1e-6


def test_cpu_bf16_explicit_path_matches_fused_kernel() -> None:
    """bf16 on a CPU takes the explicit path (faster there); it must agree with the fused kernel."""
    sdpa = ScaledDotProductAttention()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    mask = lengths_to_mask([7, 4], 7)[:, None, None, :]
    for is_causal in (False, True):
        ref, _ = sdpa(q, k, v, mask, is_causal=is_causal)  # float32: fused kernel
        out, weights = sdpa(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, is_causal=is_causal)
        assert weights is None and out.dtype == torch.bfloat16
        assert max_diff(out.float(), ref) < 3e-2


# ---------------------------------------------------------------------------------------------
# Linear's CPU inference path


@pytest.mark.parametrize("bias", [True, False])
def test_linear_inference_path_equals_nn_linear(bias: bool, monkeypatch) -> None:
    """oneDNN's matmul in inference on ≥ 4 rows, nn.Linear's own path otherwise: the same values."""
    import aiayn.layers as model_module

    calls = []
    if model_module.ONEDNN_LINEAR is not None:
        real = model_module.ONEDNN_LINEAR
        monkeypatch.setattr(model_module, "ONEDNN_LINEAR", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    ours, ref = Linear(D, 48, bias=bias), nn.Linear(D, 48, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 5, D)
    with torch.inference_mode():
        assert max_diff(ours(x), ref(x)) < TOL
        assert max_diff(ours(x[:1, :3]), ref(x[:1, :3])) < TOL  # 3 rows: nn.Linear's path
    assert len(calls) == (1 if model_module.ONEDNN_LINEAR is not None else 0)
    out = ours(x)  # with gradients: nn.Linear's path, differentiable
    out.sum().backward()
    assert ours.weight.grad is not None and len(calls) <= 1

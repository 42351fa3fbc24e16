"""attention.py (§3.2) against torch.nn.MultiheadAttention with copied weights, float64
gradcheck, hand-written mask tables, and the fused kernel against the explicit path."""

from __future__ import annotations

import pytest
import torch
from modelkit import TOL, D, H, lengths_to_mask, max_diff, mha_pair, randomize_

from aiayn.models.attention import MultiHeadAttention, ScaledDotProductAttention, causal_mask, padding_mask

pytestmark = pytest.mark.usefixtures("one_thread")


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

"""model.py (§3) against independent references: torch.nn's Transformer layers with copied
weights, padding that changes nothing, embedding tying, and Table 3's parameter column."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from modelkit import D_FF, TOL, D, H, copy_mha_, lengths_to_mask, make_model, max_diff, random_batch, small_cfg
from torch import nn

from aiayn.config import BOS_ID, PAD_ID, load_config
from aiayn.models.attention import MultiHeadAttention, causal_mask, padding_mask
from aiayn.models.transformer import DecoderLayer, EncoderLayer, Transformer, count_parameters
from aiayn.training.loss import label_smoothed_cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")


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

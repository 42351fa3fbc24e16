"""Attention extraction and figures on a tiny random-weight model (preset tiny): weights checked
against Eq. 1 recomputed by hand, softmax rows, padding and causal zeros, batch invariance;
figures checked for panels, labels, plotted values and PNG pixel sizes; the commands end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from figurekit import assert_png_matches, png_size
from toydata import save_run, train_toy_tokenizer

from aiayn.cli import main
from aiayn.config import BOS_ID, preset
from aiayn.data.batching import source_row
from aiayn.data.tokenizer import Tokenizer
from aiayn.evaluation import visualize as v
from aiayn.evaluation.plots import DPI
from aiayn.inference.translate import Translator
from aiayn.models.transformer import Transformer

SENTENCE = "en el principio creo dios los cielos y la tierra"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return train_toy_tokenizer(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def translator(tokenizer) -> Translator:
    """A random tiny model, its translations held to 6–15 subwords (it would stop at once, or never)."""
    cfg = preset("tiny")
    cfg.decode.min_len, cfg.decode.max_len_offset = 6, 0
    torch.manual_seed(0)
    return Translator(Transformer(cfg.model).eval(), tokenizer, cfg, device="cpu")


@pytest.fixture(scope="module")
def maps(translator) -> v.AttentionMaps:
    return v.sentence_attention(translator, SENTENCE)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, translator) -> Path:
    run = save_run(tmp_path_factory.mktemp("run"), translator.model, translator.config, step=7)
    translator.tokenizer.copy_to(run)
    return run


# ---------------------------------------------------------------------------- the weights


def test_encoder_weights_equal_eq1_recomputed_from_the_projections(translator, tokenizer):
    """Layer 1 of the encoder sees the embedded source; softmax(QKᵀ/√d_k) from its own Linear
    weights must equal what the model returned."""
    model, cfg = translator.model, translator.config.model
    row = source_row(tokenizer.encode(SENTENCE))
    w = v.attention_weights(model, [row], [[BOS_ID]])["encoder"][0, 0]  # (H, S, S)
    with torch.no_grad():
        x = model.encoder.embedding(torch.tensor([row]))[0]  # (S, D)
        attn = model.encoder.layers[0].self_attn
        heads, d_k = cfg.n_heads, cfg.head_dim_k
        q = (x @ attn.w_q.weight.T + attn.w_q.bias).view(len(row), heads, d_k).transpose(0, 1)  # (H, S, d_k)
        k = (x @ attn.w_k.weight.T + attn.w_k.bias).view(len(row), heads, d_k).transpose(0, 1)
        expected = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d_k), dim=-1)
    torch.testing.assert_close(w, expected, atol=1e-5, rtol=1e-5)


def test_rows_sum_to_one_padding_and_future_get_zero_and_batching_changes_nothing(translator, tokenizer):
    short = source_row(tokenizer.encode("la luz"))
    long = source_row(tokenizer.encode(SENTENCE + " y el mar"))
    tgt_short, tgt_long = [BOS_ID, 9, 10], [BOS_ID, 9, 10, 11, 12, 13, 14]
    batch = v.attention_weights(translator.model, [short, long], [tgt_short, tgt_long])
    alone = v.attention_weights(translator.model, [short], [tgt_short])
    s, t = len(short), len(tgt_short)
    real_rows = {"encoder": s, "decoder": t, "cross": t}
    real_keys = {"encoder": s, "decoder": t, "cross": s}
    for kind, w in batch.items():
        rows = w[0, :, :, : real_rows[kind]]  # (L, H, rows, keys) of the short sentence's real queries
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]))
        assert bool((rows[..., real_keys[kind] :] == 0).all()), f"{kind}: padding keys got weight"
        torch.testing.assert_close(rows[..., : real_keys[kind]], alone[kind][0], atol=1e-5, rtol=1e-5)
    decoder = batch["decoder"][1]  # (L, H, T, T) of the long target: no query sees a later position
    future = torch.ones(decoder.shape[-2:], dtype=torch.bool).triu(1)
    assert bool((decoder[..., future] == 0).all()) and bool((decoder[..., ~future] > 0).all())


def test_sentence_attention_is_teacher_forced_on_the_beam_translation(translator, tokenizer, maps):
    best = translator.translate([SENTENCE])[0][0]
    assert best.tokens, "the fixture model should translate to something"
    assert maps.translation == best.text
    assert maps.source == tokenizer.pieces(SENTENCE) + ["</s>"]
    assert maps.target == ["<s>"] + [tokenizer.id_to_piece(i) for i in best.tokens]
    cfg = translator.config.model
    s, t = len(maps.source), len(maps.target)
    assert maps.encoder.shape == (cfg.n_layers, cfg.n_heads, s, s)
    assert maps.decoder.shape == (cfg.decoder_layers, cfg.n_heads, t, t)
    assert maps.cross.shape == (cfg.decoder_layers, cfg.n_heads, t, s)
    assert maps.labels("cross") == (maps.target, maps.source)
    with pytest.raises(Exception, match="empty"):
        v.sentence_attention(translator, "   ")


# ---------------------------------------------------------------------------- the figures


def test_attention_grids_have_a_panel_per_layer_and_head_with_labels(maps, tmp_path):
    figures = v.attention_figures(maps)
    assert list(figures) == [
        "attention_encoder",
        "attention_decoder",
        "attention_cross",
        "attention_lines_encoder_layer2",
    ]
    for kind in v.KINDS:
        fig = figures[f"attention_{kind}"]
        stack = getattr(maps, kind)
        layers, heads, t_q, t_k = stack.shape
        panels = [ax for ax in fig.axes if ax.images]
        assert len(panels) == layers * heads and len(fig.axes) == layers * heads + 1  # + the colour bar
        assert fig.axes[-1].get_ylabel() == "attention weight"
        assert v.KINDS[kind] in fig._suptitle.get_text() and f"layers 1–{layers}" in fig._suptitle.get_text()
        rows, cols = maps.labels(kind)
        first, bottom_left = panels[0], panels[(layers - 1) * heads]
        assert [t.get_text() for t in first.get_yticklabels()] == rows
        assert [t.get_text() for t in bottom_left.get_xticklabels()] == cols
        np.testing.assert_array_equal(panels[heads + 1].images[0].get_array(), stack[1, 1])  # layer 2, head 2
        paths = v.save_figure(fig, tmp_path, f"grid_{kind}")
        assert [p.suffix for p in paths] == [".png", ".svg"] and paths[1].stat().st_size > 1000
        assert_png_matches(fig, paths[0])
        # Readable: every heatmap cell at least 10 pixels wide in the PNG.
        cell = first.get_window_extent().width / fig.dpi * DPI / t_k
        assert cell >= 10, f"{kind}: cells of {cell:.1f} px"


def test_lines_view_draws_each_weight_as_line_opacity(maps, tmp_path):
    layer = maps.encoder.shape[0]
    fig = v.attention_figures(maps, kind="cross", layer=1)["attention_lines_cross_layer1"]
    weights = maps.cross[0]  # (H, T, S)
    heads = weights.shape[0]
    assert len(fig.axes) == heads + 1  # all heads, then one panel per head
    assert "layer 1 of" in fig._suptitle.get_text()
    colours = v.head_colours(heads)
    for h in range(heads):
        (lines,) = fig.axes[h + 1].collections
        shown = np.sort(weights[h][weights[h] >= v.MIN_LINE_WEIGHT])
        np.testing.assert_allclose(np.sort(lines.get_colors()[:, 3]), shown, rtol=1e-6)
        np.testing.assert_allclose(lines.get_colors()[:, :3], np.tile(colours[h][:3], (len(shown), 1)))
        texts = [t.get_text() for t in fig.axes[h + 1].texts]
        assert texts == maps.target + maps.source
    assert len(fig.axes[0].collections) == heads
    assert_png_matches(fig, v.save_figure(fig, tmp_path / "lines.png", "unused")[0])
    with pytest.raises(Exception, match="has 2 encoder layers"):
        v.attention_figures(maps, layer=layer + 1)


# ---------------------------------------------------------------------------- the commands


def test_attention_command_writes_and_prints_every_figure(run_dir, tmp_path, capsys):
    out = tmp_path / "att"
    assert (
        main(
            [
                "attention",
                "--model",
                str(run_dir),
                SENTENCE,
                "--out",
                str(out),
                "--kind",
                "decoder",
                "--layer",
                "1",
                "--beam",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("translation: ")
    stems = ["attention_encoder", "attention_decoder", "attention_cross", "attention_lines_decoder_layer1"]
    assert printed[1:] == [str(out / f"{s}.{ext}") for s in stems for ext in ("png", "svg")]
    for s in stems:
        png_size(out / f"{s}.png")


def test_attention_command_reports_a_bad_layer_in_one_line(run_dir, capsys):
    assert main(["attention", "--model", str(run_dir), SENTENCE, "--layer", "3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("aiayn: error: ")
    assert "--layer 3: the model has 2 encoder layers" in err[0]

"""Table 3 at the small scale: the rows against the paper's table (transcribed here from the paper,
not from sweep.py), the paper's parameter column reproduced from each row's change, the small
mapping keeping each row's relation to its base, parameter counts against a hand formula, and a
tiny ``aiayn sweep table3`` run twice (the second skips every finished row)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from aiayn.claims.sweep import ROWS, Row, plot, row_overrides, select_rows
from aiayn.cli import main
from aiayn.config import AiaynError, load_config, parameter_count
from aiayn.models.transformer import Transformer, count_parameters
from aiayn.runtime import machine

# Table 3 of the paper as printed: (change, PPL, BLEU, params in M or None where blank).
PAPER = {
    "base": ("", 4.92, 25.8, 65),
    "A-h1": ("h=1, d_k=d_v=512", 5.29, 24.9, None),
    "A-h2": ("h=4, d_k=d_v=128", 5.00, 25.5, None),
    "A-h8": ("h=16, d_k=d_v=32", 4.91, 25.8, None),
    "A-h16": ("h=32, d_k=d_v=16", 5.01, 25.4, None),
    "B-dk16": ("d_k=16", 5.16, 25.1, 58),
    "B-dk32": ("d_k=32", 5.01, 25.4, 60),
    "C-N1": ("N=2", 6.11, 23.7, 36),
    "C-N2": ("N=4", 5.19, 25.3, 50),
    "C-N4": ("N=8", 4.88, 25.5, 80),
    "C-d128": ("d_model=256, d_k=d_v=32", 5.75, 24.5, 28),
    "C-d512": ("d_model=1024, d_k=d_v=128", 4.66, 26.0, 168),
    "C-dff512": ("d_ff=1024", 5.12, 25.4, 53),
    "C-dff2048": ("d_ff=4096", 4.75, 26.2, 90),
    "D-drop0": ("P_drop=0.0", 5.77, 24.6, None),
    "D-drop0.2": ("P_drop=0.2", 4.95, 25.5, None),
    "D-ls0": ("ε_ls=0.0", 4.67, 25.3, None),
    "D-ls0.2": ("ε_ls=0.2", 5.47, 25.7, None),
    "E-learned": ("positional=learned", 4.92, 25.7, None),
}
KEYS = {"h": "n_heads", "N": "n_layers", "P_drop": "dropout", "ε_ls": "label_smoothing"}


def paper_change(text: str) -> dict:
    """ "h=1, d_k=d_v=512" -> {"n_heads": 1, "d_k": 512, "d_v": 512}."""
    change = {}
    for part in filter(None, text.split(", ")):
        *names, value = part.split("=")
        for name in names:
            change[KEYS.get(name, name)] = value if value == "learned" else float(value) if "." in value else int(value)
    return change


def test_rows_are_the_papers_table3():
    assert [r.name for r in ROWS] == list(PAPER)
    for row in ROWS:
        text, ppl, bleu, params = PAPER[row.name]
        assert (row.paper_ppl, row.paper_bleu, row.paper_params) == (ppl, bleu, params), row.name
        assert row.paper == paper_change(text), row.name
        assert row.group == row.name.split("-")[0]


@pytest.mark.parametrize("row", [r for r in ROWS if r.paper_params], ids=lambda r: r.name)
def test_each_rows_paper_change_gives_the_papers_parameter_count(row: Row):
    """``base`` with a shared 37,000-token vocabulary and the row's change lands within 3M or 3 %
    of Table 3's column (the paper does not state its vocabulary exactly)."""
    cfg = load_config("base", overrides=["vocab_size=37000", *(f"{k}={v}" for k, v in row.paper.items())])
    millions = parameter_count(cfg.model) / 1e6
    assert abs(millions - row.paper_params) <= max(3.0, 0.03 * row.paper_params), (row.name, millions)


def test_the_small_mapping_keeps_each_rows_relation_to_its_base():
    paper, small = load_config("base").model, load_config("small").model
    for row in ROWS:
        p = load_config("base", overrides=[f"{k}={v}" for k, v in row.paper.items()]).model
        s = load_config("small", overrides=row_overrides(row)).model
        assert set(row.small) == set(row.paper), row.name  # the same settings change, and only those
        if row.group == "A":  # h·d_k = h·d_v = d_model at both scales; the heads' ratio kept above one head
            assert p.n_heads * p.head_dim_k == p.n_heads * p.head_dim_v == p.d_model
            assert s.n_heads * s.head_dim_k == s.n_heads * s.head_dim_v == s.d_model
            assert s.n_heads / small.n_heads == p.n_heads / paper.n_heads or s.n_heads == p.n_heads == 1
        elif row.group == "C":  # depth and widths scaled as the paper's, heads as wide as d_model / h
            assert s.n_layers / small.n_layers == p.n_layers / paper.n_layers
            assert s.d_model / small.d_model == p.d_model / paper.d_model
            assert s.d_ff / small.d_ff == p.d_ff / paper.d_ff
            assert s.n_heads * s.head_dim_k == s.d_model
        else:  # B, D, E: the paper's own values
            assert row.small == row.paper, row.name


def hand_count(*, vocab: int, d: int, d_ff: int, h: int, d_k: int, d_v: int, n: int, positions: int = 0) -> int:
    """Weights and biases of §3 from the sizes: each attention W^Q, W^K (h·d_k), W^V (h·d_v), W^O;
    the FFN's two layers; a LayerNorm (gain and bias) after each sublayer; one shared embedding;
    learned position tables (source and target) of ``positions`` rows."""
    attention = 2 * (d * h * d_k + h * d_k) + (d * h * d_v + h * d_v) + (h * d_v * d + d)
    ffn = d * d_ff + d_ff + d_ff * d + d
    encoder, decoder = attention + ffn + 2 * 2 * d, 2 * attention + ffn + 3 * 2 * d
    return vocab * d + 2 * positions * d + n * (encoder + decoder)


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("base", dict(d=256, d_ff=1024, h=4, d_k=64, d_v=64, n=3)),
        ("A-h1", dict(d=256, d_ff=1024, h=1, d_k=256, d_v=256, n=3)),
        ("B-dk16", dict(d=256, d_ff=1024, h=4, d_k=16, d_v=64, n=3)),
        ("C-N1", dict(d=256, d_ff=1024, h=4, d_k=64, d_v=64, n=1)),
        ("C-d512", dict(d=512, d_ff=1024, h=4, d_k=128, d_v=128, n=3)),
        ("E-learned", dict(d=256, d_ff=1024, h=4, d_k=64, d_v=64, n=3, positions=1024)),
    ],
)
def test_small_rows_parameter_counts_match_a_hand_formula(name, sizes):
    row = next(r for r in ROWS if r.name == name)
    cfg = load_config("small", overrides=row_overrides(row))
    with torch.device("meta"):
        built = count_parameters(Transformer(cfg.model))
    assert built == hand_count(vocab=8000, **sizes)


def test_rows_are_chosen_by_group_or_name():
    assert [r.name for r in select_rows("E")] == ["base", "E-learned"]
    assert [r.name for r in select_rows("C-N1, A")] == ["base", "A-h1", "A-h2", "A-h8", "A-h16", "C-N1"]
    assert len(select_rows("A,B,C,D,E")) == len(ROWS)
    for bad in ("F", "A,Z-1", ""):
        with pytest.raises(AiaynError, match="--rows"):
            select_rows(bad)


TINY_SWEEP = ["--preset", "tiny", "max_steps=12", "threads=1", "precision=fp32", "eval_every=1000"]


def test_tiny_sweep_end_to_end_skips_finished_rows_and_resumes_interrupted_ones(toy_corpus, tmp_path, capsys):
    out = tmp_path / "t3"
    argv = ["sweep", "table3", "--data", str(toy_corpus), "--minutes", "5", "--rows", "E", "--out", str(out)]
    assert main(argv + TINY_SWEEP + ["max_len_offset=5"]) == 0
    report = json.loads((out / "table3.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["base", "E-learned"]
    tiny = load_config("tiny").model
    for name, r in rows.items():
        assert r["updates"] == 12
        assert math.isfinite(r["valid_ppl"]) and r["valid_ppl"] > 1
        assert 0 <= r["valid_bleu"] <= 100
        positions = tiny.max_len if name == "E-learned" else 0
        vocab = json.loads((toy_corpus / "meta.json").read_text())["vocab_size"]
        sizes = dict(d=tiny.d_model, d_ff=tiny.d_ff, h=tiny.n_heads, d_k=8, d_v=8, n=tiny.n_layers)
        assert r["parameters"] == hand_count(vocab=vocab, positions=positions, **sizes)
    assert load_config(path=out / "E-learned" / "config.yaml").model.positional == "learned"
    base = load_config(path=out / "base" / "config.yaml")  # tiny's own dropout is 0.0: the paper's base is kept
    assert (base.model.dropout, base.train.dropout_from_epoch, base.train.label_smoothing) == (0.1, 0, 0.1)
    assert "per subword" in (out / "table3.md").read_text()
    assert f"per row on {machine()['cpu']} ({os.cpu_count()} cores)" in (out / "table3.md").read_text()
    assert (out / "table3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    finished = {name: (out / name / "row.json").stat().st_mtime_ns for name in rows}
    (out / "E-learned" / "row.json").unlink()  # as if killed after training, before its report
    assert main(argv + TINY_SWEEP) == 0
    err = capsys.readouterr().err
    assert "base finished before, skipped" in err and "resuming" in err
    assert (out / "base" / "row.json").stat().st_mtime_ns == finished["base"]
    again = {r["row"]: r for r in json.loads((out / "table3.json").read_text())["rows"]}
    assert again["E-learned"]["updates"] == 12  # resumed at its last step: no update more


def test_plot_bleu_axis_is_at_least_one_point_wide():
    """BLEU of 0.004 and 0.006 both print as 0.0: on an axis scaled to 0.006 they would look like a
    difference. The axis spans at least a BLEU point, and grows with the largest row."""

    def row(name, group, bleu):
        return {"row": name, "group": group, "valid_ppl": 300.0, "valid_bleu": bleu}

    near_zero = plot([row("base", "base", 0.004), row("A-h1", "A", 0.006)])
    assert near_zero.axes[1].get_xlim() == (0.0, 1.0)
    trained = plot([row("base", "base", 20.0), row("A-h1", "A", 24.0)])
    assert trained.axes[1].get_xlim()[1] == pytest.approx(24.0 * 1.15)

"""Tasks beyond translation end to end through the `aiayn` command: prepare a g2p and a synthetic
folder, train a tiny model for seconds, and evaluate each with its own metric (WER/PER, exact
accuracy on test_long); the run folder carries vocab.json; attention figures draw from it; export
refuses it in one line; unknown input symbols are counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiayn.cli import main
from aiayn.config import preset
from aiayn.data.corpus import load_meta, read_references
from aiayn.data.synthetic import LONG_LENGTHS
from aiayn.evaluation.evaluate import exact_scores, g2p_scores

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--preset", "tiny", "threads=1", "precision=fp32", "max_steps=30", "eval_every=30"]


def train(data: Path, run: Path) -> Path:
    assert main(["train", "--data", str(data), "--out", str(run), *TINY]) == 0
    assert (run / "vocab.json").is_file() and not (run / "spm.model").exists()
    return run


@pytest.fixture(scope="module")
def g2p(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("g2p")
    lines = [
        f"{a}{b}{c} {a.upper()}H1 {b.upper()}{'' if c == 'x' else 'Y'}0 K"
        for a in "bdfgkm"
        for b in "aeiou"
        for c in "xy"
    ]
    lines += ["tomato T AH0 M EY1 T OW2", "tomato(2) T AH0 M AA1 T OW2"]
    (root / "dict.txt").write_text("\n".join(lines) + "\n")
    assert main(["prepare", "cmudict", "--file", str(root / "dict.txt"), "--out", str(root / "data"),
                 "--valid-words", "6", "--test-words", "8"]) == 0  # fmt: skip
    return root / "data", train(root / "data", root / "run")


def test_g2p_evaluate_reports_wer_and_per_against_every_reference(g2p, tmp_path, capsys):
    data, run = g2p
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--out", str(tmp_path), "--beam", "2"]) == 0
    printed = capsys.readouterr().out
    assert "WER = " in printed and "PER = " in printed and "BLEU" not in printed
    scores = json.loads((tmp_path / "scores.json").read_text())
    hyps = (tmp_path / "hyp.phon").read_text().splitlines()
    assert scores["task"] == "g2p" and scores["words"] == 8 == len(hyps)
    again = g2p_scores(hyps, read_references(data, "test"))
    assert (scores["wer"], scores["per"]) == (again["wer"], again["per"])


def test_g2p_attention_figures_and_unknown_letters(g2p, tmp_path, capsys):
    data, run = g2p
    assert main(["attention", "bax", "--model", str(run), "--out", str(tmp_path / "fig"), "--kind", "cross"]) == 0
    assert list((tmp_path / "fig").glob("*.png"))
    (tmp_path / "in.txt").write_text("bäx\nzzz\n")
    capsys.readouterr()
    assert main(["translate", "--model", str(run), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "out.txt")]) == 0  # fmt: skip
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 2
    assert "4 symbol(s) not in the vocabulary were read as UNK ('z' ×3, 'ä' ×1)" in capsys.readouterr().err


def test_export_refuses_a_symbol_tokenizer_in_one_line(g2p, tmp_path, capsys):
    _, run = g2p
    capsys.readouterr()
    assert main(["export", "--model", str(run), "--to", "ctranslate2", "--out", str(tmp_path / "ct2")]) != 0
    err = capsys.readouterr().err.strip()
    assert "tokenizer is symbols (vocab.json)" in err and "\n" not in err and not (tmp_path / "ct2").exists()


def test_synthetic_evaluate_reports_exact_accuracy_on_test_long(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["prepare", "synthetic", "reverse", "--out", str(data), "--train", "300", "--held-out", "20"]) == 0
    run = train(data, tmp_path / "run")
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--split", "test_long", "--out", str(out)]) == 0
    assert "exact-sequence accuracy = " in capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text())
    hyps = (out / "hyp.out").read_text().splitlines()
    assert scores["split"] == "test_long" and scores["sequences"] == 20
    assert scores["accuracy"] == exact_scores(hyps, read_references(data, "test_long"))["accuracy"]
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--split", "test_longer"]) != 0
    assert "unknown split 'test_longer'" in capsys.readouterr().err


def test_positions_cover_the_longest_test_sequences():
    """test_long's sources reach 40 symbols (add: 40 + 1 + 40), and the search allows source + 50
    outputs: every preset's position table covers both."""
    longest = 2 * LONG_LENGTHS[1] + 1 + 1  # the two operands, "+", EOS
    for name in ("tiny", "small", "base"):
        cfg = preset(name)
        assert cfg.model.max_len >= longest + cfg.decode.max_len_offset


def test_an_unknown_task_in_meta_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    main(["prepare", "synthetic", "copy", "--out", str(data), "--train", "50", "--held-out", "5"])
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "task": "parse"}))
    with pytest.raises(Exception, match="unknown task 'parse'"):
        load_meta(data)

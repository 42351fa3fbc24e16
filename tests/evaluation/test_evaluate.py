"""sacreBLEU/chrF scoring against sacrebleu's own functions, and `aiayn evaluate` end to end
on a tiny random-weight model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from toydata import random_run

from aiayn.cli import main
from aiayn.config import AiaynError
from aiayn.evaluation.evaluate import corpus_scores, edit_distance, exact_scores, g2p_scores, task_scores
from aiayn.inference.translate import Translator

HYPS = ["The cat sat on the mat.", "In the beginning God created the heavens and the earth.", "Let there be light"]
REFS = [
    "The cat is sitting on the mat.",
    "In the beginning, God created the heavens and the earth.",
    "Let there be light.",
]
SOURCES = ["en el principio", "dios creo la luz", "la noche y el dia", "el mar"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_scores_equal_sacrebleu_called_directly():
    scores = corpus_scores(HYPS, REFS)
    assert scores["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert scores["chrf"] == sacrebleu.corpus_chrf(HYPS, [REFS]).score
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    assert "tok:13a" in scores["bleu_signature"] and "nrefs:1" in scores["chrf_signature"]
    assert corpus_scores(REFS, REFS)["bleu"] == pytest.approx(100.0)
    with pytest.raises(AiaynError):
        corpus_scores(HYPS[:2], REFS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    # A random model rarely stops: keep its outputs short.
    return random_run(tmp_path_factory.mktemp("run"), max_len_offset=5)


def test_evaluate_command_with_files(run_dir, tmp_path, capsys):
    (tmp_path / "test.es").write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    refs = ["in the beginning", "god made light", "night and day", "the sea"]
    (tmp_path / "test.en").write_text("\n".join(refs) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run_dir),
                "--src",
                str(tmp_path / "test.es"),
                "--ref",
                str(tmp_path / "test.en"),
                "--out",
                str(tmp_path / "eval"),
                "--hyp-out",
                str(tmp_path / "h.txt"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    hyps = (tmp_path / "eval" / "hyp.en").read_text(encoding="utf-8").split("\n")[:-1]
    assert hyps == (tmp_path / "h.txt").read_text(encoding="utf-8").split("\n")[:-1]
    expected = [t[0].text for t in Translator.load(run_dir, "cpu").translate(SOURCES)]
    assert hyps == expected
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text(encoding="utf-8"))
    assert scores["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert scores["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert scores["sentences"] == 4 and scores["beam_size"] == 4 and scores["alpha"] == 0.6
    assert "BLEU = " in printed and "signature: nrefs:1|case:mixed|eff:no|tok:13a" in printed


def test_evaluate_command_on_a_data_folder(run_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(
        json.dumps({"src_lang": "es", "tgt_lang": "en", "counts": {"test": 2}, "vocab_size": 64}), encoding="utf-8"
    )
    (data / "test.es").write_text("el mar\nla luz\n", encoding="utf-8")
    (data / "test.en").write_text("the sea\nthe light\n", encoding="utf-8")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run_dir),
                "--data",
                str(data),
                "--split",
                "test",
                "--beam",
                "2",
                "--out",
                str(tmp_path / "eval"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text(encoding="utf-8"))
    hyps = (tmp_path / "eval" / "hyp.en").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hyps) == 2 and scores["split"] == "test" and scores["beam_size"] == 2
    assert scores["bleu"] == sacrebleu.corpus_bleu(hyps, [["the sea", "the light"]]).score


def test_evaluate_errors_are_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "a.es").write_text("uno\ndos\n", encoding="utf-8")
    (tmp_path / "b.en").write_text("one\n", encoding="utf-8")
    assert (
        main(["evaluate", "--model", str(run_dir), "--src", str(tmp_path / "a.es"), "--ref", str(tmp_path / "b.en")])
        == 2
    )
    assert main(["evaluate", "--model", str(run_dir), "--src", str(tmp_path / "a.es")]) == 2
    assert main(["evaluate", "--model", str(run_dir), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("aiayn: error: ") for line in err)
    assert "2 lines" in err[0] and "1" in err[0]


# ---------------------------------------------------------------- the tasks' own metrics


def test_edit_distance_counts_insertions_deletions_substitutions():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance([], ["A", "B"]) == 2 and edit_distance(["A", "B"], []) == 2
    assert edit_distance(["A"], ["A"]) == 0


def test_g2p_scores_by_hand():
    hyps = ["T AH0 M AA1 T OW2", "", "K AE1 T S", "D AO1"]
    refs = [["T AH0 M EY1 T OW2", "T AH0 M AA1 T OW2"], ["HH AY1"], ["K AE1 T"], ["D AO1 G"]]
    found = g2p_scores(hyps, refs)
    # right (its second reference) | empty: 2 deletions of 2 | 1 insertion of 3 | 1 deletion of 3
    assert (found["words"], found["words_wrong"]) == (4, 3)
    assert found["wer"] == pytest.approx(75.0)
    assert (found["phoneme_errors"], found["reference_phonemes"]) == (4, 6 + 2 + 3 + 3)
    assert found["per"] == pytest.approx(100 * 4 / 14)


def test_g2p_per_uses_the_closest_reference_first_among_equals():
    # Distance 1 to both; the first listed (1 phoneme) is the one whose length counts.
    assert g2p_scores(["A B"], [["A", "A B C"]])["per"] == pytest.approx(100.0)
    assert g2p_scores(["A B"], [["A B C", "A"]])["per"] == pytest.approx(100 / 3)
    # The closest, not the first: 1 edit of 4 phonemes, not 2 of 2.
    assert g2p_scores(["A B C"], [["X Y", "A B C D"]])["per"] == pytest.approx(25.0)
    assert g2p_scores(["A  B"], [["A B"]])["wer"] == 0.0  # compared as phonemes, not as strings


def test_exact_accuracy_and_task_dispatch():
    assert exact_scores(["abc", "cba", ""], [["abc"], ["abc"], ["x"]])["accuracy"] == pytest.approx(100 / 3)
    assert task_scores("sort", ["ab"], [["ab"]])["accuracy"] == 100.0
    assert task_scores("translation", HYPS, [[r, "other"] for r in REFS])["bleu"] == corpus_scores(HYPS, REFS)["bleu"]
    with pytest.raises(AiaynError, match="unknown task 'parse'"):
        task_scores("parse", ["a"], [["a"]])
    with pytest.raises(AiaynError, match="2 hypotheses but 1 references"):
        g2p_scores(["a", "b"], [["a"]])

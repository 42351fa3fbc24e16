"""symbols.py: char and symbol tokenizers round-trip exactly, keep the special ids, count unknown
symbols, and `open_tokenizer` opens whichever kind a folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toydata import train_toy_tokenizer

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, AiaynError
from aiayn.data.symbols import SymbolTokenizer, encode_targets, open_tokenizer
from aiayn.data.tokenizer import Tokenizer

WORDS = ["thought", "it's", "x-ray", "café au lait"]
PHONES = ["TH AO1 T", "IH1 T S", "EH1 K S R EY2", "K AE0 F EY1 OW1 L EY1"]


def test_char_tokenizer_round_trips_every_character_spaces_included():
    tok = SymbolTokenizer.build({"source": WORDS, "target": WORDS}, source="char", target="char")
    assert tok.kind == "char"
    for text in WORDS + ["  it's  a ray ", "é"]:
        ids = tok.encode(text)
        assert len(ids) == len(text) and UNK_ID not in ids
        assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID]) == text
    assert tok.symbols[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert min(i for t in WORDS for i in tok.encode(t)) > EOS_ID


def test_symbol_tokenizer_splits_each_side_its_own_way():
    tok = SymbolTokenizer.build({"source": WORDS, "target": PHONES}, source="char", target="symbols")
    assert tok.kind == "symbols"
    assert len(tok.encode("thought")) == 7
    targets = encode_targets(tok, PHONES)
    assert [len(t) for t in targets] == [len(p.split()) for p in PHONES]
    assert [tok.decode(t) for t in targets] == PHONES  # exact round trip
    assert tok.pieces("it's") == ["i", "t", "'", "s"]
    assert [tok.id_to_piece(i) for i in targets[0]] == ["TH", "AO1", "T"]


def test_unknown_symbols_are_unk_and_counted(capsys):
    tok = SymbolTokenizer.build({"source": ["abc"], "target": ["A B"]}, source="char", target="symbols")
    assert tok.encode("abz") == [tok.ids["a"], tok.ids["b"], UNK_ID]
    assert tok.decode([tok.ids["A"], UNK_ID]) == "A ⁇"
    assert tok.pieces("az") == ["a", "⁇"]
    tok.encode("zz")
    tok.report_unknown("stdin")
    err = capsys.readouterr().err
    assert "3 symbol(s)" in err and "'z' ×3" in err
    tok.report_unknown("stdin")  # forgotten once reported
    assert capsys.readouterr().err == ""


def test_saved_vocabulary_loads_the_same_and_opens_by_folder(tmp_path):
    tok = SymbolTokenizer.build({"source": WORDS, "target": PHONES}, source="char", target="symbols")
    tok.save(tmp_path)
    again = open_tokenizer(tmp_path)
    assert isinstance(again, SymbolTokenizer)
    assert again.symbols == tok.symbols and (again.source, again.target) == ("char", "symbols")
    run = tmp_path / "run"
    again.copy_to(run)
    assert open_tokenizer(run).symbols == tok.symbols
    spm = tmp_path / "spm"
    spm.mkdir()
    train_toy_tokenizer(spm)
    assert isinstance(open_tokenizer(spm), Tokenizer) and open_tokenizer(spm).kind == "sentencepiece"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"units": {"source": "char", "target": "words"}, "symbols": ["a"]}, "units.target is 'words'"),
        ({"units": {"source": "char", "target": "symbols"}, "symbols": ["a", "a"]}, "appears twice"),
        ({"units": {"source": "char", "target": "symbols"}, "symbols": ["<s>"]}, "unusable"),
        ({"symbols": ["a"]}, "not a symbol vocabulary"),
    ],
)
def test_a_damaged_vocabulary_is_one_line_naming_it(tmp_path, body, message):
    (tmp_path / "vocab.json").write_text(json.dumps(body))
    with pytest.raises(AiaynError, match=message) as info:
        open_tokenizer(tmp_path)
    assert "vocab.json" in str(info.value) and "\n" not in str(info.value)


def test_a_folder_without_tokenizer_says_how_to_make_one(tmp_path):
    with pytest.raises(AiaynError, match="aiayn prepare"):
        open_tokenizer(Path(tmp_path))

"""``aiayn prepare files``: one-line errors for bad input, counted drops, NFC, an end-to-end run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from aiayn.cli import main
from aiayn.config import AiaynError
from aiayn.data.corpus import SPLITS, holdout_size, load_meta, read_split
from aiayn.data.text import read_lines

NOUNS = [
    ("der Hund", "the dog"),
    ("die Katze", "the cat"),
    ("das Haus", "the house"),
    ("ein Baum", "a tree"),
    ("mein Freund", "my friend"),
    ("dein Buch", "your book"),
]
VERBS = [("schläft", "sleeps"), ("läuft", "runs"), ("ist rot", "is red"), ("ist groß", "is big")]


def sentences(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pairs = [(f"{a} {v}", f"{b} {w}") for (a, b), (v, w) in ((rng.choice(NOUNS), rng.choice(VERBS)) for _ in range(n))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def write(path: Path, lines: list[str] | bytes) -> Path:
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def prepare(capsys, *args: str) -> tuple[int, str]:
    """Run ``aiayn prepare files ...``; return the exit code and stderr."""
    code = main(["prepare", "files", "--vocab-size", "40", *args])
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("aiayn: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_prepares_a_small_corpus_end_to_end(tmp_path, capsys):
    de, en = sentences(60)
    de[5], en[5] = "   ", "the empty source"  # empty after cleanup: dropped
    de[9], en[9] = "ein sehr langer Satz " * 3, "a long one"  # 63 characters > --max-chars 40
    de[12], en[12] = "Cafe\u0301  und\tTee ", "coffee  and tea"  # decomposed é, runs of whitespace
    src, tgt, out = write(tmp_path / "train.de", de), write(tmp_path / "train.en", en), tmp_path / "data"
    code, _ = prepare(capsys, "--src", str(src), "--tgt", str(tgt), "--out", str(out), "--max-chars", "40")
    assert code == 0
    meta = load_meta(out)
    assert (meta["src_lang"], meta["tgt_lang"], meta["vocab_size"]) == ("de", "en", 40)
    assert meta["dropped"] == {"empty": 1, "too_long": 1} and meta["pairs_read"] == 60
    assert meta["counts"] == {"train": 52, "valid": 3, "test": 3}  # 5 % of 58, rounded
    pairs = {s: list(zip(*read_split(out, s))) for s in SPLITS}
    kept = [(a, b) for i, (a, b) in enumerate(zip(de, en)) if i not in (5, 9, 12)]
    kept.append(("Café und Tee", "coffee and tea"))
    assert sorted(p for s in SPLITS for p in pairs[s]) == sorted(kept)
    assert (out / "spm.model").is_file() and (out / "spm.vocab").is_file()
    held_out = [(out / f"{s}.{lang}").read_bytes() for s in ("valid", "test") for lang in ("de", "en")]
    assert prepare(capsys, "--src", str(src), "--tgt", str(tgt), "--out", str(out), "--max-chars", "40")[0] == 0
    assert [(out / f"{s}.{lang}").read_bytes() for s in ("valid", "test") for lang in ("de", "en")] == held_out


def test_given_valid_and_test_files_and_tsv_with_references(tmp_path, capsys):
    de, en = sentences(40)
    rows = [f"S.{i}\t{a}\t{b}" for i, (a, b) in enumerate(zip(de, en))]
    tsv = write(tmp_path / "corpus.de-en.tsv", rows)
    valid_de, valid_en = write(tmp_path / "v.de", de[:4]), write(tmp_path / "v.en", en[:4])
    out = tmp_path / "data"
    code, _ = prepare(
        capsys, "--tsv", str(tsv), "--valid-src", str(valid_de), "--valid-tgt", str(valid_en), "--out", str(out)
    )
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    # A given valid split: every pair of the corpus trains, and no test split is carved out of it.
    assert meta["counts"] == {"train": 40, "valid": 4, "test": 0} and meta["src_lang"] == "de"
    assert meta["held_out_of_corpus"] == {}
    assert read_split(out, "valid") == (de[:4], en[:4]) and read_split(out, "test") == ([], [])
    assert read_split(out, "train") == (de, en)
    refs = [line.split("\t")[0] for line in (out / "train.tsv").read_text().splitlines()]
    assert refs == [f"S.{i}" for i in range(40)]


def test_hold_out_is_reported_and_given_test_alone_still_needs_a_valid(tmp_path, capsys):
    de, en = sentences(60)
    src, tgt = write(tmp_path / "c.de", de), write(tmp_path / "c.en", en)
    test_de, test_en = write(tmp_path / "t.de", de[:5]), write(tmp_path / "t.en", en[:5])
    main(["prepare", "files", "--vocab-size", "40", "--src", str(src), "--tgt", str(tgt), "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert "held out 3 for valid and 3 for test of the 60 usable pairs" in out and "--valid-src" in out
    main(
        [
            "prepare",
            "files",
            "--vocab-size",
            "40",
            "--src",
            str(src),
            "--tgt",
            str(tgt),
            "--test-src",
            str(test_de),
            "--test-tgt",
            str(test_en),
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert "held out 3 for valid and" not in capsys.readouterr().out
    meta = load_meta(tmp_path / "b")
    assert meta["counts"] == {"train": 57, "valid": 3, "test": 5} and meta["held_out_of_corpus"] == {"valid": 3}


def test_different_line_counts_name_the_line_where_one_file_ends(tmp_path, capsys):
    src, tgt = write(tmp_path / "a.de", ["eins", "zwei", "drei"]), write(tmp_path / "a.en", ["one", "two"])
    code, err = prepare(capsys, "--src", str(src), "--tgt", str(tgt), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(err, f"{tgt}:3:", "after 2 lines", f"{src} has 3")


def test_read_lines_drops_a_byte_order_mark_and_carriage_returns(tmp_path):
    crlf = write(tmp_path / "crlf.txt", b"\xef\xbb\xbfein Hund\r\nzwei\tKatzen\r\n\r\ndrei\r")
    assert read_lines(crlf) == ["ein Hund", "zwei\tKatzen", "", "drei"]
    mixed = write(tmp_path / "mixed.txt", b"\xef\xbb\xbfeins\nzwei\r\n")
    assert read_lines(mixed) == ["eins", "zwei"]


@pytest.mark.parametrize("layout", ["files", "tsv"])
def test_crlf_and_a_byte_order_mark_prepare_the_same_folder(tmp_path, capsys, layout):
    """Windows editors write CRLF and often a UTF-8 BOM: the prepared folder is byte for byte the
    one the LF, BOM-less files give, the tokenizer's vocabulary included (spm.model also records
    the paths it was trained from, and meta.json the input paths)."""
    de, en = sentences(40)
    rows = [f"S.{i}\t{a}\t{b}" for i, (a, b) in enumerate(zip(de, en))]

    def prepared(name: str, newline: str, bom: bool) -> dict[str, bytes]:
        folder = tmp_path / name
        folder.mkdir()

        def text(lines: list[str]) -> bytes:
            return (b"\xef\xbb\xbf" if bom else b"") + "".join(line + newline for line in lines).encode()

        if layout == "files":
            src, tgt = write(folder / "train.de", text(de)), write(folder / "train.en", text(en))
            args = ["--src", str(src), "--tgt", str(tgt)]
        else:
            args = ["--tsv", str(write(folder / "corpus.de-en.tsv", text(rows)))]
        code, err = prepare(capsys, *args, "--out", str(folder / "data"))
        assert code == 0, err
        meta = json.loads((folder / "data" / "meta.json").read_text())
        assert meta.pop("inputs")
        skip = ("meta.json", "spm.model")
        files = {p.name: p.read_bytes() for p in (folder / "data").iterdir() if p.name not in skip}
        return {**files, "meta": json.dumps(meta).encode()}

    plain = prepared("lf", "\n", bom=False)
    assert {"train.de", "valid.en", "spm.vocab"} <= set(plain)
    for name, newline, bom in (("crlf-bom", "\r\n", True), ("crlf", "\r\n", False), ("bom", "\n", True)):
        assert prepared(name, newline, bom) == plain, name


def test_invalid_utf8_names_file_line_and_byte(tmp_path, capsys):
    src = write(tmp_path / "a.de", b"gut\nschl\xe4ft\n")  # Latin-1 "ä" on line 2, byte 8
    tgt = write(tmp_path / "a.en", ["good", "sleeps"])
    code, err = prepare(capsys, "--src", str(src), "--tgt", str(tgt), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(err, f"{src}:2:", "invalid UTF-8 at byte 8")


def test_empty_corpus(tmp_path, capsys):
    src, tgt = write(tmp_path / "a.de", b""), write(tmp_path / "a.en", b"")
    code, err = prepare(capsys, "--src", str(src), "--tgt", str(tgt), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(err, str(src), "empty corpus")


def test_only_empty_pairs_is_an_error_not_an_empty_folder(tmp_path, capsys):
    src, tgt = write(tmp_path / "a.de", ["", " ", "x"]), write(tmp_path / "a.en", ["a", "b", "\t"])
    code, err = prepare(capsys, "--src", str(src), "--tgt", str(tgt), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(err, "no usable pairs (3 empty")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "rows, line, found",
    [
        (["a\tb", "c\td", "only one column"], 3, "found 1"),
        (["a\tb", "c\td\te\tf"], 2, "found 4"),
        (["r\ta\tb", "c\td"], 2, "expected 3 like the first row"),
    ],
)
def test_tsv_rows_need_two_or_three_columns(tmp_path, capsys, rows, line, found):
    tsv = write(tmp_path / "c.tsv", rows)
    code, err = prepare(capsys, "--tsv", str(tsv), "--src-lang", "de", "--tgt-lang", "en", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(err, f"{tsv}:{line}:", found)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--src", "{d}/a.txt", "--tgt", "{d}/b.txt"], "--src-lang and --tgt-lang"),
        (["--src", "{d}/a.de"], "either --src FILE --tgt FILE or --tsv FILE"),
        (["--src", "{d}/a.de", "--tgt", "{d}/a.en", "--valid-src", "{d}/a.de"], "--valid-src and --valid-tgt go"),
        (["--src", "{d}/missing.de", "--tgt", "{d}/a.en"], "missing.de: file not found"),
    ],
)
def test_usage_errors(tmp_path, capsys, args, fragment):
    for name in ("a.txt", "b.txt", "a.de", "a.en"):
        write(tmp_path / name, ["x", "y", "z"])
    code, err = prepare(capsys, *[a.format(d=tmp_path) for a in args], "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(err, fragment)


def test_load_meta_and_read_split_need_a_prepared_folder(tmp_path):
    with pytest.raises(AiaynError, match="not a prepared data folder.*aiayn prepare"):
        load_meta(tmp_path)
    with pytest.raises(AiaynError, match="aiayn prepare"):
        read_split(tmp_path, "train")


@pytest.mark.parametrize("n, held_out", [(3, 1), (10, 1), (58, 3), (1000, 50), (20_000, 1000), (10**6, 1000)])
def test_holdout_size(n, held_out):
    assert holdout_size(n) == held_out

"""Tokenizer: exact round trips, fixed special ids, clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, AiaynError
from aiayn.data.tokenizer import Tokenizer

ES = (
    "el Señor dijo a Moisés que él y su niño irían al monte ; y la mujer cantó una canción "
    "en el corazón de la tierra , cuando el año pasó y el pájaro voló sobre el árbol"
).split()
EN = (
    "the Lord said to Moses that he and his child would go to the mountain ; and the woman sang "
    "a song in the heart of the land , when the year passed and the bird flew over the tree"
).split()


def _sentence(rng: random.Random, words: list[str]) -> str:
    body = " ".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
    opener, closer = rng.choice([("", "."), ("¿", "?"), ("¡", "!"), ("«", "»"), ("", ":"), ("", "")])
    number = f" {rng.randint(1, 150)}:{rng.randint(1, 40)}" if rng.random() < 0.2 else ""
    return f"{opener}{body[0].upper()}{body[1:]}{number}{closer}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("corpus")
    lines = {"es": [_sentence(rng, ES) for _ in range(2000)], "en": [_sentence(rng, EN) for _ in range(2000)]}
    for lang, text in lines.items():
        (folder / f"train.{lang}").write_text("\n".join(text) + "\n", encoding="utf-8")
    return folder, lines["es"] + lines["en"]


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
    folder, _ = corpus
    return Tokenizer.train([folder / "train.es", folder / "train.en"], folder / "model", vocab_size=300)


def test_train_writes_model_and_vocab(tok, corpus):
    folder, _ = corpus
    assert tok.model_path == folder / "model" / "spm.model"
    assert (folder / "model" / "spm.vocab").is_file()
    assert tok.vocab_size == 300


def test_round_trip_on_every_line(tok, corpus):
    _, lines = corpus
    ids = tok.encode_batch(lines)
    assert ids == [tok.encode(line) for line in lines]
    assert [tok.decode(i) for i in ids] == lines
    assert [tok.decode(x) for x in ids] == lines
    assert all(UNK_ID not in row for row in ids)  # character_coverage 1.0 keeps "ñ", "¿", "«"


def test_special_ids_are_fixed(tok, corpus):
    assert [tok.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    _, lines = corpus
    used = {i for row in tok.encode_batch(lines) for i in row}
    assert not used & {PAD_ID, BOS_ID, EOS_ID}  # encode adds no BOS/EOS; batching does


def test_decode_strips_pad_bos_eos_and_accepts_tensors(tok):
    text = "¿Dijo el Señor a él y al niño?"
    ids = tok.encode(text)
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == text
    assert tok.decode(torch.tensor([BOS_ID, *ids, EOS_ID])) == text
    assert tok.decode([]) == ""


def test_whole_sequence_decoding_keeps_spaces(tok):
    # Pitfall 23: decoding piece by piece and joining loses the word boundaries.
    text = "el Señor dijo"
    ids = tok.encode(text)
    assert len(ids) > 1 and tok.decode(ids) == text
    assert "".join(tok.decode([i]) for i in ids) != text


def test_pieces_spell_the_text(tok):
    text = "el niño cantó"
    pieces = tok.pieces(text)
    assert [tok.id_to_piece(i) for i in tok.encode(text)] == pieces
    assert "".join(pieces).replace("▁", " ").strip() == text


def test_unknown_characters_become_unk_and_decode_visibly(tok):
    ids = tok.encode("el 日本 niño")
    assert UNK_ID in ids
    assert tok.decode(ids) == "el ⁇ niño"
    assert tok.decode(tok.encode("Se日or")) == "Se⁇or"


def test_load_from_folder_file_and_copy_agree(tok, corpus, tmp_path):
    _, lines = corpus
    copied = tok.copy_to(tmp_path / "ckpt")
    assert copied == tmp_path / "ckpt" / "spm.model" and (tmp_path / "ckpt" / "spm.vocab").is_file()
    expected = tok.encode_batch(lines[:50])
    for path in (tok.model_path, tok.model_path.parent, copied, tmp_path / "ckpt"):
        assert Tokenizer.load(path).encode_batch(lines[:50]) == expected


def test_training_is_deterministic(tok, corpus):
    folder, _ = corpus
    again = Tokenizer.train([folder / "train.es", folder / "train.en"], folder / "again", vocab_size=300)
    assert (folder / "again" / "spm.vocab").read_bytes() == (folder / "model" / "spm.vocab").read_bytes()
    assert again.encode("el Señor") == tok.encode("el Señor")


def test_too_large_vocabulary_names_the_fix(corpus, tmp_path):
    folder, _ = corpus
    with pytest.raises(AiaynError, match=r"--vocab-size \d+ or less"):
        Tokenizer.train([folder / "train.es"], tmp_path, vocab_size=50_000)


def test_missing_files_are_user_errors(tmp_path):
    with pytest.raises(AiaynError, match="not found"):
        Tokenizer.load(tmp_path)
    with pytest.raises(AiaynError, match="not found"):
        Tokenizer.train([tmp_path / "nope.es"], tmp_path)
    (tmp_path / "spm.model").write_text("not a model")
    with pytest.raises(AiaynError, match="not a SentencePiece model"):
        Tokenizer.load(tmp_path)


def test_bible_test_split_round_trips_exactly_debian_packages(bible_data):
    tok = Tokenizer.load(bible_data)
    meta = json.loads((bible_data / "meta.json").read_text())
    for lang in (meta["src_lang"], meta["tgt_lang"]):
        lines = (bible_data / f"test.{lang}").read_text(encoding="utf-8").splitlines()
        assert len(lines) > 500
        assert [tok.decode(x) for x in tok.encode_batch(lines)] == lines

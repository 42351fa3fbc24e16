"""Toy material for tests: a small synthetic translation task (the target is the source reversed
word by word, over a Spanish-looking vocabulary, prepared with the real `aiayn prepare files` path),
and a tiny SentencePiece model and random-weight run folder for the inference tests."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import torch

from aiayn.config import Config, preset
from aiayn.data.corpus import prepare_files
from aiayn.data.tokenizer import Tokenizer
from aiayn.models.transformer import Transformer
from aiayn.training.checkpoint import save_checkpoint, step_path

WORDS = (
    "el la de que y en un una por con para su al lo como más pero sus le ya o este sí porque esta "
    "entre cuando muy sin sobre también me hasta hay donde quien desde todo nos durante todos uno les "
    "ni contra otros ese eso ante ellos esto mí antes algunos qué unos yo otro otras otra él tanto"
).split()
TOY_WORDS = "en el principio creo dios los cielos y la tierra luz agua noche dia mar".split()


def make_toy_data(folder: Path, pairs: int = 3000, vocab_size: int = 200, seed: int = 0) -> Path:
    """Write raw files under ``folder/raw`` and a prepared data folder at ``folder/data``."""
    rng = random.Random(seed)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sources = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(pairs)]
    (raw / "train.es").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (raw / "train.en").write_text("\n".join(" ".join(reversed(s.split())) for s in sources) + "\n", encoding="utf-8")
    prepare_files(folder / "data", src=raw / "train.es", tgt=raw / "train.en", vocab_size=vocab_size)
    return folder / "data"


def train_toy_tokenizer(folder: Path, vocab_size: int = 64) -> Tokenizer:
    """A SentencePiece model trained in ``folder`` on 400 seeded random sentences of ``TOY_WORDS``."""
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choices(TOY_WORDS, k=rng.randint(3, 12))) for _ in range(400))
    (folder / "train.txt").write_text(text + "\n", encoding="utf-8")
    return Tokenizer.train([folder / "train.txt"], folder, vocab_size=vocab_size)


def save_run(folder: Path, model: Transformer, cfg: Config, step: int = 1) -> Path:
    """Write ``model`` and ``cfg`` as the checkpoint of ``step`` in the run folder ``folder``."""
    save_checkpoint(
        step_path(folder, step), {"model": model.state_dict(), "config": json.dumps(cfg.to_dict()), "step": step}
    )
    return folder


def random_run(folder: Path, step: int = 1, **decode: int) -> Path:
    """A run folder holding the toy tokenizer and a random ``preset("tiny")`` model (seed 0) whose
    ``decode`` settings are overridden by ``decode`` (e.g. ``min_len``, ``max_len_offset``)."""
    train_toy_tokenizer(folder)
    cfg = preset("tiny")
    cfg.decode = dataclasses.replace(cfg.decode, **decode)
    torch.manual_seed(0)
    return save_run(folder, Transformer(cfg.model), cfg, step)

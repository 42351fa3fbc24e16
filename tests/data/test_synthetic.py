"""synthetic.py: generators deterministic under a seed, every answer right by an independent
check, held-out sources never seen in training, and the test_long split of longer sequences."""

from __future__ import annotations

import pytest

from aiayn.config import AiaynError
from aiayn.data.corpus import load_meta, read_split
from aiayn.data.synthetic import GENERATORS, LONG_LENGTHS, TRAIN_LENGTHS, generate, prepare_synthetic

CHECKS = {
    "copy": lambda s: s,
    "reverse": lambda s: "".join(reversed(list(s))),
    "sort": lambda s: "".join(sorted(s)),
    "add": lambda s: str(sum(int(x) for x in s.split("+"))),
}


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_answers_are_right_and_lengths_in_range(task):
    for lengths in (TRAIN_LENGTHS, LONG_LENGTHS):
        rows = generate(task, 300, lengths=lengths, seed=7)
        assert rows == generate(task, 300, lengths=lengths, seed=7)
        assert rows != generate(task, 300, lengths=lengths, seed=8)
        for source, target in rows:
            assert target == CHECKS[task](source)
            parts = source.split("+") if task == "add" else [source]
            assert all(lengths[0] <= len(p) <= lengths[1] for p in parts)
            assert all(p == "0" or not p.startswith("0") for p in parts) if task == "add" else source.isalpha()
        found = {len(s.split("+")[0]) for s, _ in rows}
        assert min(found) == lengths[0] and max(found) == lengths[1]  # the whole range is drawn


def test_prepared_folder_has_test_long_and_no_training_source_held_out(tmp_path):
    meta = prepare_synthetic("sort", tmp_path / "sort", seed=3, train=2000, held_out=100)
    assert meta["task"] == "sort" and meta["tokenizer"] == "char"
    assert meta["counts"] == {"train": 2000, "valid": 100, "test": 100, "test_long": 100}
    train = set(read_split(tmp_path / "sort", "train")[0])
    for split in ("valid", "test", "test_long"):
        src, tgt = read_split(tmp_path / "sort", split)
        assert not train & set(src) and len(set(src)) == len(src)
        assert all(t == "".join(sorted(s)) for s, t in zip(src, tgt))
    assert min(map(len, read_split(tmp_path / "sort", "test_long")[0])) >= 21
    assert load_meta(tmp_path / "sort")["lengths"]["test_long"] == list(LONG_LENGTHS)
    with pytest.raises(AiaynError, match="unknown split 'test_longer'.*test_long"):
        read_split(tmp_path / "sort", "test_longer")


def test_unknown_task_and_too_small_a_space_are_one_line():
    with pytest.raises(AiaynError, match="unknown synthetic task 'rotate'"):
        generate("rotate", 1, lengths=(1, 2), seed=1)
    with pytest.raises(AiaynError, match="unseen in training"):
        generate("copy", 30, lengths=(1, 1), seed=1, avoid=set("abcdefghij"))

"""Batching: exact rows and masks, token budgets, determinism, DDP shards, exact resume."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from aiayn.cli import main
from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError
from aiayn.data.batching import (
    BatchStream,
    collate,
    format_report,
    make_batches,
    padding_report,
    shard,
    source_row,
    target_counts,
)
from aiayn.data.tokenizer import Tokenizer


def _random_pairs(n: int, seed: int = 0, longest: int = 60) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        m = rng.randint(0, longest)
        src.append([rng.randint(4, 99) for _ in range(m)])
        tgt.append([rng.randint(4, 99) for _ in range(max(1, m + rng.randint(-5, 5)))])
    return src, tgt


def _lens(src, tgt):
    return [len(x) for x in src], [len(y) for y in tgt]


def test_collate_hand_checked():
    src_ids = [[5, 6, 7], [8]]
    tgt_ids = [[9], [10, 11, 12]]
    b = collate([1, 0], src_ids, tgt_ids)
    assert b.src.tolist() == [[8, EOS_ID, PAD_ID, PAD_ID], [5, 6, 7, EOS_ID]]
    assert b.tgt_in.tolist() == [[BOS_ID, 10, 11, 12], [BOS_ID, 9, PAD_ID, PAD_ID]]
    assert b.tgt_out.tolist() == [[10, 11, 12, EOS_ID], [9, EOS_ID, PAD_ID, PAD_ID]]
    assert b.src_mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert b.tgt_mask.tolist() == [[True, True, True, True], [True, True, False, False]]
    assert b.ids.tolist() == [1, 0]
    assert b.src.dtype == b.tgt_in.dtype == b.tgt_out.dtype == b.ids.dtype == torch.long
    assert b.src_mask.dtype == b.tgt_mask.dtype == torch.bool
    assert (b.size, int(b.src_mask.sum()), b.n_tgt_tokens) == (2, 6, 6)
    moved = b.to("cpu")
    assert torch.equal(moved.tgt_out, b.tgt_out) and moved.n_tgt_tokens == 6


def test_source_row_appends_eos_and_truncates():
    assert source_row([5, 6, 7]) == [5, 6, 7, EOS_ID]
    assert source_row([]) == [EOS_ID]
    assert source_row(list(range(10, 20)), max_len=4) == [10, 11, 12, EOS_ID]


def test_equal_lengths_fill_batches_exactly():
    # Rows of 9 + 1 = 10 positions under a budget of 35: three pairs per batch, then the rest.
    batches = make_batches([9] * 10, [9] * 10, 35, seed=0, epoch=0, shuffle=False)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.parametrize("batch_tokens", [64, 200, 1000])
def test_padded_size_within_budget_on_both_sides(batch_tokens):
    src, tgt = _random_pairs(500)
    src.append([7] * 1200)  # alone longer than every budget: a batch of one
    tgt.append([4, 5])
    batches = make_batches(*_lens(src, tgt), batch_tokens, seed=3, epoch=1)
    for b in batches:
        batch = collate(b, src, tgt)
        if len(b) > 1:
            assert batch.src.numel() <= batch_tokens and batch.tgt_in.numel() <= batch_tokens
    assert [len(src) - 1] in batches


def test_every_example_once_per_epoch():
    src, tgt = _random_pairs(700)
    for epoch in range(3):
        batches = make_batches(*_lens(src, tgt), 400, seed=1, epoch=epoch)
        assert sorted(i for b in batches for i in b) == list(range(700))


def test_batches_are_deterministic_per_seed_and_epoch():
    lens = _lens(*_random_pairs(700))
    a = make_batches(*lens, 400, seed=1, epoch=0)
    assert a == make_batches(*lens, 400, seed=1, epoch=0)
    assert a != make_batches(*lens, 400, seed=1, epoch=1)
    assert a != make_batches(*lens, 400, seed=2, epoch=0)


def test_unshuffled_batches_come_in_length_order():
    src_lens, tgt_lens = _lens(*_random_pairs(300))
    batches = make_batches(src_lens, tgt_lens, 300, shuffle=False)
    flat = [i for b in batches for i in b]
    assert flat == sorted(range(300), key=lambda i: (tgt_lens[i], src_lens[i], i))


def test_sort_by_target_then_source_or_target_alone():
    """sort=length orders by (target, source) length, sort=target by target length alone, sources
    at random within one (in index order when unshuffled); both keep every pair once within the
    budget, and sort=target's batches hold a wider range of source lengths."""
    src, tgt = _random_pairs(2000, seed=4)
    src_lens, tgt_lens = _lens(src, tgt)
    flat = lambda batches: [i for b in batches for i in b]  # noqa: E731
    unshuffled = make_batches(src_lens, tgt_lens, 500, shuffle=False, sort="target")
    assert flat(unshuffled) == sorted(range(2000), key=lambda i: (tgt_lens[i], i))
    spread = {}
    for sort in ("length", "target"):
        batches = make_batches(src_lens, tgt_lens, 500, seed=1, epoch=0, sort=sort)
        assert sorted(flat(batches)) == list(range(2000))
        assert all(len(b) == 1 or collate(b, src, tgt).src.numel() <= 500 for b in batches)
        assert batches == make_batches(src_lens, tgt_lens, 500, seed=1, epoch=0, sort=sort)
        spread[sort] = sum(max(src_lens[i] for i in b) - min(src_lens[i] for i in b) for b in batches) / len(batches)
    assert spread["target"] > 1.4 * spread["length"]  # 8.5 against 5.2 here


@pytest.mark.parametrize("sort", ["length", "target"])
def test_total_limit_counts_both_sides_padding_and_cuts_greedily(sort):
    """limit=total: a batch's padded rows × (S + T), from the collated tensors, stays within
    2 × batch_tokens, and each batch is as long as it can be: its next pair in length order would
    break the budget. Under sort=target it keeps more target tokens a batch than limit=side."""
    src, tgt = _random_pairs(2000, seed=5)
    src_lens, tgt_lens = _lens(src, tgt)
    batches = make_batches(src_lens, tgt_lens, 500, shuffle=False, sort=sort, limit="total")
    for b, following in zip(batches, batches[1:]):
        batch, grown = collate(b, src, tgt), collate([*b, following[0]], src, tgt)
        assert len(b) == 1 or batch.src.numel() + batch.tgt_in.numel() <= 1000
        assert grown.src.numel() + grown.tgt_in.numel() > 1000
    assert sorted(i for b in batches for i in b) == list(range(2000))
    side = make_batches(src_lens, tgt_lens, 500, shuffle=False, sort=sort)
    if sort == "target":  # 139 batches against 147 here; 360 against 409 on the Bible corpus
        assert len(batches) < len(side)


def test_shard_equal_disjoint_and_covering():
    batches = [[i] for i in range(10)]
    shards = [shard(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert shards[1] == [[1], [4], [7]]
    flat = [b[0] for s in shards for b in s]
    assert sorted(flat) == list(range(9))
    with pytest.raises(ValueError):
        shard(batches, 3, 3)


def _take(stream: BatchStream, k: int):
    it = iter(stream)
    return [next(it) for _ in range(k)]


def _same(a, b) -> bool:
    return (
        a[:2] == b[:2]
        and torch.equal(a[2].src, b[2].src)
        and torch.equal(a[2].tgt_out, b[2].tgt_out)
        and torch.equal(a[2].ids, b[2].ids)
    )


def test_stream_resumes_exactly_at_the_next_batch():
    src, tgt = _random_pairs(60)

    def make() -> BatchStream:
        return BatchStream(src, tgt, batch_tokens=300, max_len=64, seed=5)

    uninterrupted = _take(make(), 25)
    per_epoch = len(make())
    assert 3 <= per_epoch < 10  # so 25 batches cross epoch boundaries
    assert [e for e, _, _ in uninterrupted][per_epoch] == 1
    for k in (per_epoch - 1, per_epoch, per_epoch + 3):
        first = make()
        consumed = _take(first, k)
        state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
        resumed = make()
        resumed.load_state_dict(state)
        rest = _take(resumed, 25 - k)
        assert all(_same(a, b) for a, b in zip(consumed + rest, uninterrupted))


def test_stream_epoch_covers_kept_pairs_and_drops_long_ones():
    src, tgt = _random_pairs(200, longest=80)
    stream = BatchStream(src, tgt, batch_tokens=500, max_len=50, seed=0)
    long = {i for i in range(200) if len(src[i]) > 50 or len(tgt[i]) > 50}
    assert stream.n_dropped == len(long) > 0
    seen = [i for _, _, b in _take(stream, len(stream)) for i in b.ids.tolist()]
    assert sorted(seen) == sorted(set(range(200)) - long)
    with pytest.raises(AiaynError, match="data.max_len"):
        BatchStream(src, tgt, batch_tokens=500, max_len=0, seed=0)


def test_stream_shards_ranks_equally():
    src, tgt = _random_pairs(300)
    streams = [BatchStream(src, tgt, 400, 64, seed=2, rank=r, world_size=2) for r in range(2)]
    assert len(streams[0]) == len(streams[1])
    ids = [{i for b in s.batches(0) for i in b} for s in streams]
    assert not ids[0] & ids[1]
    with pytest.raises(AiaynError, match="processes"):
        BatchStream(src[:2], tgt[:2], 4096, 64, seed=0, world_size=4).batches(0)


@pytest.fixture(scope="module")
def bible_train_ids(bible_data) -> tuple[list[list[int]], list[list[int]]]:
    tok = Tokenizer.load(bible_data)
    meta = json.loads((bible_data / "meta.json").read_text())
    return tuple(
        tok.encode_batch((bible_data / f"train.{meta[k]}").read_text(encoding="utf-8").splitlines())
        for k in ("src_lang", "tgt_lang")
    )


@pytest.mark.parametrize("batch_tokens", [4096, 3000])
def test_bible_padding_efficiency_debian_packages(bible_data, bible_train_ids, batch_tokens):
    report = padding_report(bible_data, batch_tokens)
    assert report["padding_efficiency"] >= 0.9
    # Recount from the tensors training would see, independently of the report's arithmetic.
    src, tgt = bible_train_ids
    stream = BatchStream(src, tgt, batch_tokens, report["max_len"], seed=1)
    batches = [collate(b, src, tgt) for b in stream.batches(0)]
    real = sum(int(b.src_mask.sum()) + int(b.tgt_mask.sum()) for b in batches)
    padded = sum(b.src.numel() + b.tgt_out.numel() for b in batches)
    assert report["padding_efficiency"] == pytest.approx(real / padded)
    assert report["batches"] == len(batches) and report["pairs"] == len(src)
    assert all(b.src.numel() <= batch_tokens and b.tgt_out.numel() <= batch_tokens for b in batches if b.size > 1)


def test_data_stats_command_debian_packages(bible_data, capsys):
    assert main(["data-stats", "--data", str(bible_data), "--batch-tokens", "3000", "--split", "valid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "split                        valid" in lines and "batch_tokens                 3,000" in lines
    assert any(line.startswith("padding_efficiency ") for line in lines)


def test_data_stats_missing_folder_is_one_line_error(tmp_path, capsys):
    assert main(["data-stats", "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aiayn: error:") and "\n" not in err


def test_format_report_aligns_values():
    text = format_report({"pairs": 1234, "padding_efficiency": 0.91234, "split": "train"})
    assert text.splitlines() == ["pairs               1,234", "padding_efficiency  0.912", "split               train"]


def test_target_counts_count_what_tgt_out_holds():
    """Every real position of the collated tgt_out rows, counted with a Counter: each subword of
    y and one EOS a sentence, nothing of BOS or padding."""
    tgt = [[5, 6, 6], [7], [], [6, 5, 9, 9, 9]]
    rows = collate(range(len(tgt)), [[4]] * len(tgt), tgt).tgt_out
    expected = Counter(i for i in rows.flatten().tolist() if i != PAD_ID)
    counts = target_counts(tgt, 12)
    assert counts.shape == (12,) and counts.sum().item() == sum(expected.values()) == 13
    assert {i: c for i, c in enumerate(counts.tolist()) if c} == dict(expected)

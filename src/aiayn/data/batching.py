"""Token-bucketed batches, §5.1: "Sentence pairs were batched together by approximate sequence
length. Each training batch contained a set of sentence pairs containing approximately 25000
source tokens and 25000 target tokens."

Row layout (fairseq's convention), for a pair of subword sequences x and y without specials:

    src     = x + EOS        the encoder sees where the sentence ends
    tgt_in  = BOS + y        the decoder's input, shifted right (§3.1)
    tgt_out = y + EOS        what it must predict at each position

so a pair occupies ``len(x) + 1`` source and ``len(y) + 1`` target positions. Rows are padded
with PAD_ID on the right, and masks use the model's one polarity: True = real token.

Batches are cut so that their *padded* size (rows × longest row) stays within ``batch_tokens``
on both sides; sorting by length first keeps that padding small. The batch list depends only
on (seed, epoch), so every DDP rank builds the same list and takes its own share, and a
resumed run rebuilds exactly the epoch it stopped in (docs/pitfalls.md: "Equal batch counts across ranks" and "Resume").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError, DataConfig
from aiayn.data.corpus import read_split
from aiayn.data.symbols import SymbolTokenizer, encode_targets, open_tokenizer
from aiayn.data.tokenizer import Tokenizer


def source_row(ids: Sequence[int], max_len: int | None = None) -> list[int]:
    """The encoder's input for one sentence: its subwords + EOS, at most ``max_len`` positions.

    Training drops over-long pairs instead (``BatchStream``), so only translation truncates.
    """
    if max_len is not None:
        ids = ids[: max_len - 1]
    return [*ids, EOS_ID]


@dataclass
class Batch:
    """One batch of sentence pairs. Shapes: B pairs, S source and T target positions."""

    src: torch.Tensor  # (B, S) long: x + EOS, then PAD
    tgt_in: torch.Tensor  # (B, T) long: BOS + y, then PAD
    tgt_out: torch.Tensor  # (B, T) long: y + EOS, then PAD
    src_mask: torch.Tensor  # (B, S) bool: True = real token
    tgt_mask: torch.Tensor  # (B, T) bool: True = real token (same positions for tgt_in and tgt_out)
    ids: torch.Tensor  # (B,) long: the pairs' indices in their split
    _n_tgt: int | None = field(default=None, repr=False, compare=False)

    @property
    def n_tgt_tokens(self) -> int:
        """Real target positions on the ``tgt_out`` side (EOS included): the tokens the loss sees.
        Counted once, on the host: a loss normalised by tokens then never waits on the GPU."""
        if self._n_tgt is None:
            self._n_tgt = int(self.tgt_mask.sum())
        return self._n_tgt

    @property
    def size(self) -> int:
        return self.src.size(0)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        n_tgt = self.n_tgt_tokens
        moved = (
            t.to(device, non_blocking=non_blocking)
            for t in (self.src, self.tgt_in, self.tgt_out, self.src_mask, self.tgt_mask, self.ids)
        )
        return Batch(*moved, _n_tgt=n_tgt)


def pad_rows(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows of ids with PAD_ID: ids (B, L) long and mask (B, L) bool, True = real token."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    out = np.full((len(rows), int(lengths.max())), PAD_ID, dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    mask = np.arange(out.shape[1]) < lengths[:, None]
    return torch.from_numpy(out), torch.from_numpy(mask)


def collate(indices: Sequence[int], src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]]) -> Batch:
    """Build the batch of pairs ``indices`` from tokenized sentences (no BOS/EOS in the inputs)."""
    src, src_mask = pad_rows([source_row(src_ids[i]) for i in indices])
    tgt_in, tgt_mask = pad_rows([[BOS_ID, *tgt_ids[i]] for i in indices])
    tgt_out, _ = pad_rows([[*tgt_ids[i], EOS_ID] for i in indices])
    return Batch(src, tgt_in, tgt_out, src_mask, tgt_mask, torch.tensor(list(indices), dtype=torch.long))


def target_counts(tgt_ids: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """(V,) how often each id is a target in ``tgt_out`` rows: every subword of y, and EOS once a
    sentence (for a model that starts from the unigram distribution: ``init_output_bias``)."""
    ids = np.fromiter((i for y in tgt_ids for i in y), dtype=np.int64)
    counts = torch.from_numpy(np.bincount(ids, minlength=vocab_size))
    counts[EOS_ID] += len(tgt_ids)
    return counts


def make_batches(
    src_lens: Sequence[int],
    tgt_lens: Sequence[int],
    batch_tokens: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    sort: str = "length",
    limit: str = "side",
) -> list[list[int]]:
    """Group pair indices into batches of at most ``batch_tokens`` padded positions per side
    (``limit="side"``: rows × the longer padded side), or of at most ``2 × batch_tokens`` padded
    positions on both sides together (``limit="total"``: rows × (S + T)).

    ``src_lens``/``tgt_lens`` count subwords without specials; each side's row is one longer
    (EOS, or BOS/EOS). Pairs are sorted by target length, then (``sort="length"``) by source
    length, ties broken at random, or (``sort="target"``) with the sources of one target length
    in random order, as Hugging Face and fairseq-style length bucketing on one side do; then cut
    greedily; a pair that alone exceeds ``batch_tokens`` becomes a batch of one rather than being
    lost. ``length`` pads least; ``target`` gives each batch sources of many lengths, so batches
    are less alike (docs/quality.md measures both). Under ``target`` a batch's longest source
    sets its width, so ``side`` cuts it short of ``batch_tokens`` target tokens; ``total``
    counts both sides' padding together, as Hugging Face Marian's and fairseq's token budgets do,
    and keeps about ``batch_tokens`` real target tokens a batch. With ``shuffle`` the tie-breaking and the
    batch order come from a generator seeded by (seed, epoch), so each epoch differs but is
    reproducible; without it the batches come in length order (for decoding).
    """
    src_w = np.asarray(src_lens, dtype=np.int64) + 1
    tgt_w = np.asarray(tgt_lens, dtype=np.int64) + 1
    n = len(src_w)
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    tie = rng.permutation(n) if rng is not None else np.arange(n)
    keys = (tie, src_w, tgt_w) if sort == "length" else (tie, tgt_w)
    order = np.lexsort(keys)  # last key sorts first: target, (source,) tie
    # Greedy cut in length order: a batch grows while rows × its padded width fits. The width is
    # exact, not conservative: each side pads to its own longest row, so the batch occupies
    # rows × S and rows × T positions, and max(S, T) = the max over rows of max(src, tgt).
    if limit == "side":
        capacity, width = batch_tokens, lambda s, t: max(s, t)
    else:
        capacity, width = 2 * batch_tokens, lambda s, t: s + t
    batches: list[list[int]] = []
    start, longest_s, longest_t = 0, 0, 0
    for k, (s, t) in enumerate(zip(src_w[order].tolist(), tgt_w[order].tolist())):
        longest_s, longest_t = max(longest_s, s), max(longest_t, t)
        if k > start and (k - start + 1) * width(longest_s, longest_t) > capacity:
            batches.append(order[start:k].tolist())
            start, longest_s, longest_t = k, s, t
    if n:
        batches.append(order[start:].tolist())
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def fixed_batches(
    src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], batch_tokens: int, max_len: int
) -> list[Batch]:
    """The pairs that fit ``max_len`` on both sides, batched once in length order: validation
    sees the same batches at every evaluation, so its losses compare across steps."""
    keep = [i for i, (x, y) in enumerate(zip(src_ids, tgt_ids)) if len(x) <= max_len and len(y) <= max_len]
    order = make_batches([len(src_ids[i]) for i in keep], [len(tgt_ids[i]) for i in keep], batch_tokens, shuffle=False)
    return [collate([keep[j] for j in b], src_ids, tgt_ids) for b in order]


def tokenized_split(
    data_dir: Path, split: str, tokenizer: Tokenizer | SymbolTokenizer
) -> tuple[list[str], list[str], list[list[int]], list[list[int]]]:
    """A prepared split as text and as token ids: (sources, targets, source ids, target ids)."""
    src, tgt = read_split(data_dir, split)
    return src, tgt, tokenizer.encode_batch(src), encode_targets(tokenizer, tgt)


def shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """Rank r's share for DDP: batches r, r + W, r + 2W, …

    The tail that does not divide evenly is dropped so every rank runs the same number of
    steps; with unequal counts the ranks that finish early would hang the others
    (docs/pitfalls.md: "Equal batch counts across ranks").
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


class BatchStream:
    """Endless training batches: yields ``(epoch, index_in_epoch, Batch)``, epochs counted from 0.

    Pairs longer than ``max_len`` subwords on either side are dropped (``n_dropped`` counts them).
    ``state_dict()`` names the next batch to yield, so a run restored with ``load_state_dict``
    continues exactly where the saved one stopped instead of repeating data (docs/pitfalls.md: "Resume").
    """

    def __init__(
        self,
        src_ids: Sequence[Sequence[int]],
        tgt_ids: Sequence[Sequence[int]],
        batch_tokens: int,
        max_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        sort: str = "length",
        limit: str = "side",
    ):
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"{len(src_ids)} source but {len(tgt_ids)} target sentences")
        self.src_ids, self.tgt_ids = src_ids, tgt_ids
        self.batch_tokens, self.seed, self.shuffle, self.sort, self.limit = batch_tokens, seed, shuffle, sort, limit
        self.rank, self.world_size = rank, world_size
        self.kept = [i for i, (x, y) in enumerate(zip(src_ids, tgt_ids)) if len(x) <= max_len and len(y) <= max_len]
        self.n_dropped = len(src_ids) - len(self.kept)
        if not self.kept:
            raise AiaynError(
                f"all {len(src_ids)} training pairs are longer than data.max_len={max_len} subwords; raise data.max_len"
            )
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, as indices into the split."""
        if self._cached is None or self._cached[0] != epoch:
            src_lens = [len(self.src_ids[i]) for i in self.kept]
            tgt_lens = [len(self.tgt_ids[i]) for i in self.kept]
            local = make_batches(
                src_lens, tgt_lens, self.batch_tokens, self.seed, epoch, self.shuffle, self.sort, self.limit
            )
            mine = shard([[self.kept[j] for j in b] for b in local], self.rank, self.world_size)
            if not mine:
                raise AiaynError(
                    f"{len(local)} batches cannot be shared by {self.world_size} processes; "
                    f"lower data.batch_tokens or use fewer processes"
                )
            self._cached = (epoch, mine)
        return self._cached[1]

    def __len__(self) -> int:
        """Batches in the current epoch (the count can move by one or two between epochs)."""
        return len(self.batches(self.epoch))

    def __iter__(self) -> Iterator[tuple[int, int, Batch]]:
        while True:
            batches = self.batches(self.epoch)
            while self.position < len(batches):
                index = self.position
                self.position += 1  # advanced before the yield: the state names the next batch
                yield self.epoch, index, collate(batches[index], self.src_ids, self.tgt_ids)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def padding_report(
    data_dir: Path, batch_tokens: int = 4096, split: str = "train", max_len: int = DataConfig.max_len, seed: int = 1
) -> dict[str, float | int | str]:
    """Tokenize a prepared split, batch it as training would (epoch 0), and measure the padding.

    ``padding_efficiency`` = real positions / padded positions, source and target together.
    """
    data_dir = Path(data_dir)
    if batch_tokens <= 0:
        raise AiaynError(f"--batch-tokens must be positive, got {batch_tokens}")
    if not data_dir.is_dir():
        raise AiaynError(f"{data_dir}: data folder not found; create it with `aiayn prepare`")
    tok = open_tokenizer(data_dir)
    src_lines, tgt_lines = read_split(data_dir, split)
    src_ids, tgt_ids = tok.encode_batch(src_lines), encode_targets(tok, tgt_lines)
    stream = BatchStream(src_ids, tgt_ids, batch_tokens, max_len, seed)
    batches = stream.batches(0)
    real = padded = real_src = padded_src = 0
    for b in batches:
        s = [len(src_ids[i]) + 1 for i in b]
        t = [len(tgt_ids[i]) + 1 for i in b]
        real_src += sum(s)
        padded_src += len(b) * max(s)
        real += sum(s) + sum(t)
        padded += len(b) * (max(s) + max(t))
    n = len(stream.kept)
    return {
        "split": split,
        "pairs": len(src_ids),
        "dropped_longer_than_max_len": stream.n_dropped,
        "max_len": max_len,
        "src_tokens": sum(map(len, src_ids)),
        "tgt_tokens": sum(map(len, tgt_ids)),
        "longest_src": max(map(len, src_ids), default=0),
        "longest_tgt": max(map(len, tgt_ids), default=0),
        "vocab_size": tok.vocab_size,
        "batch_tokens": batch_tokens,
        "batches": len(batches),
        "mean_batch_pairs": n / len(batches),
        "src_padding_efficiency": real_src / padded_src,
        "tgt_padding_efficiency": (real - real_src) / (padded - padded_src),
        "padding_efficiency": real / padded,
    }


def format_report(report: dict[str, float | int | str]) -> str:
    """The report as aligned ``name  value`` lines, for ``aiayn prepare`` and ``aiayn data-stats``."""
    width = max(map(len, report))
    lines = []
    for key, value in report.items():
        text = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        lines.append(f"{key.ljust(width)}  {text}")
    return "\n".join(lines)

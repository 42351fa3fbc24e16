"""Decoding as pure functions over a ``step_fn``: greedy, beam search (§6.1) and sampling.

The model is hidden behind one callable, so every search here is tested with scripted
probability tables (tests/inference/test_search.py) and reused unchanged by translate.py::

    step_fn(prefix (N, t), state) -> (log_probs (N, V), state)

``prefix`` holds every token so far, starting with BOS. ``state`` is ``None`` or an object
with ``reorder(index) -> state`` whose rows become ``index``; the index may be shorter than
N, because the rows of finished sentences are dropped so that no compute is spent on them.
Rows of one sentence's beams are contiguous: row = sentence * K + k.

Lengths. ``max_len[b]`` bounds the number of decoding steps for sentence b, EOS included:
a hypothesis that ends with EOS has at most ``max_len - 1`` tokens, one cut off by the limit
has ``max_len`` tokens and ``finished=False``. The length |Y| in the length penalty counts
EOS too, i.e. |Y| is the number of log-probabilities summed into ``log_prob`` (as in
fairseq). ``min_len`` is the fewest tokens before EOS is allowed (EOS not counted).
New tensors are created on ``max_len``'s device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aiayn.config import AiaynError

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
PENALTIES = ("gnmt", "fairseq", "none")
# When beam search ends a sentence. "bound" (tensor2tensor's rule, the default): once no live
# beam can beat the n-best finished ones even at the most favourable length, so no longer search
# would change the result. "finished" (fairseq's and CTranslate2's): once beam_size hypotheses
# have ended; faster, since it need not wait for the live beams to fall below the bound, but a
# longer hypothesis that would have won can be missed.
STOPS = ("bound", "finished")


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # length-normalised log-probability: what ranks hypotheses
    log_prob: float  # sum of the token log-probabilities (EOS included when finished)
    finished: bool  # False: cut off at max_len without EOS


def lp(length: int | torch.Tensor, alpha: float, kind: str = "gnmt") -> float | torch.Tensor:
    """The length penalty lp(|Y|) that divides log P(Y). ``gnmt``: ((5 + |Y|) / 6)^α (Wu et al. 2016, the paper's
    α = 0.6); ``fairseq``: |Y|^α (fairseq, Hugging Face, Marian); ``none``: 1."""
    if kind == "gnmt":
        return ((5 + length) / 6) ** alpha
    if kind == "fairseq":
        return length**alpha
    if kind == "none":
        return length**0.0
    raise AiaynError(f"unknown length penalty '{kind}' (choose from {', '.join(PENALTIES)})")


def _check(batch_size: int, max_len: torch.Tensor, min_len: int) -> torch.Tensor:
    max_len = torch.as_tensor(max_len).long()
    if max_len.shape != (batch_size,):
        raise AiaynError(f"max_len must have one entry per sentence ({batch_size}), got shape {tuple(max_len.shape)}")
    if batch_size and int(max_len.min()) < 1:
        raise AiaynError("max_len must be at least 1 for every sentence")
    if min_len < 0:
        raise AiaynError("min_len cannot be negative")
    return max_len


def _rank(hyps: list[Hypothesis]) -> list[Hypothesis]:
    """Finished hypotheses first (a complete translation beats a truncated one), then by score."""
    return sorted(hyps, key=lambda h: (not h.finished, -h.score))


# Widths of the vocabulary chunks that ``best_continuations`` ranks first: multiples of the SIMD
# width, so that a chunk's maximum is a few vector instructions. 64 measured fastest (8,000 words).
CHUNK_WIDTHS = (64, 32, 16)


def best_continuations(scores: torch.Tensor, log_probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` best continuations of each sentence, as
    ``(scores[:, :, None] + log_probs.view(A, K, V)).view(A, K·V).topk(n)``: values (A, n) best first
    and indices beam·V + token.

    scores (A, K) of the live beams, log_probs (A·K, V) of their next tokens. Forming all K·V sums
    and ranking them took 0.37 ms per step at 128 rows of 8,000 words, 6 % of decoding at beam 4,
    batch 32. So when a width in ``CHUNK_WIDTHS`` divides V, each row's log-probs are cut into
    chunks of that width and only the ``n`` chunks with the best maxima (plus their beam's score)
    are ranked in full (0.16 ms). They hold the ``n`` best values: every value above the n-th best
    is in a chunk whose maximum beats the n-th best, and there are fewer than ``n`` such chunks;
    if a chunk holding one of the n best was left out, the ``n`` chosen ones each hold a value at
    least as good. Among values tied with the n-th best, which index is returned may differ from
    ``topk``'s, whose own order among ties is unspecified.
    """
    (A, K), V = scores.shape, log_probs.size(-1)
    width = next((w for w in CHUNK_WIDTHS if V % w == 0 and K * V // w >= n), 0)
    if not width:
        return (scores.reshape(-1, 1) + log_probs).view(A, K * V).topk(n, dim=1)
    maxima = log_probs.reshape(A * K, V // width, width).amax(dim=-1)  # (A*K, V/width)
    chunk = (scores.reshape(-1, 1) + maxima).view(A, K * V // width).topk(n, dim=1).indices  # (A, n) beam·V/width + c
    offsets = torch.arange(width, device=chunk.device)
    index = (chunk.unsqueeze(-1) * width + offsets).view(A, n * width)  # (A, n*width) beam·V + token
    sums = scores.gather(1, index // V) + log_probs.reshape(A, K * V).gather(1, index)  # (A, n*width)
    top, pick = sums.topk(n, dim=1)  # (A, n)
    return top, index.gather(1, pick)


def beam_search(
    step_fn: StepFn,
    state: Any,
    batch_size: int,
    bos: int,
    eos: int,
    max_len: torch.Tensor,
    beam_size: int = 4,
    alpha: float = 0.6,
    length_penalty: str = "gnmt",
    min_len: int = 0,
    nbest: int = 1,
    *,
    stop: str = "bound",
) -> list[list[Hypothesis]]:
    """Beam search with the paper's settings (§6.1: beam 4, α = 0.6, stop early when possible).

    Each step takes the best 2K of K×V continuations per sentence (``best_continuations``): EOS among
    the first K finishes a hypothesis, the first K that are not EOS stay live, so every
    sentence always has K live beams. A sentence stops once no live beam can beat the worst
    of its n-best finished ones even at the most favourable length (the penalty grows with
    length and log-probs are ≤ 0, so that is ``max_len``), or at ``max_len``; then its rows
    leave the batch. ``stop="finished"`` ends a sentence once ``beam_size`` hypotheses have
    finished instead (see ``STOPS``). Returns, per sentence, up to ``nbest`` hypotheses, best first; where
    fewer than ``nbest`` finished, live ones cut off at ``max_len`` fill up (finished=False).
    """
    max_len = _check(batch_size, max_len, min_len)
    if not 1 <= nbest <= beam_size:
        raise AiaynError(f"nbest must be between 1 and the beam size ({beam_size}), got {nbest}")
    lp(1, alpha, length_penalty)  # rejects an unknown kind before any compute
    if stop not in STOPS:
        raise AiaynError(f"unknown stopping rule '{stop}' (choose from {', '.join(STOPS)})")
    device, K, inf = max_len.device, beam_size, float("inf")
    results: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    if batch_size == 0:
        return results
    lp_max = lp(max_len.double(), alpha, length_penalty)  # (B,) best penalty reachable

    sent = torch.arange(batch_size, device=device)  # original index of each live sentence (A,)
    # All K beams start identical: only beam 0 may expand at step 0, or copies fill the beam.
    scores = torch.full((batch_size, K), -inf, device=device)  # (A, K) summed log-probs
    scores[:, 0] = 0.0
    prefix = torch.full((batch_size * K, 1), bos, dtype=torch.long, device=device)  # (A*K, t)
    if state is not None:
        state = state.reorder(torch.arange(batch_size, device=device).repeat_interleave(K))
    worst_kept = torch.full((batch_size,), -inf, dtype=torch.double, device=device)  # (A,) -inf until n-best full
    n_finished = torch.zeros(batch_size, dtype=torch.long, device=device)  # (A,) hypotheses ended so far
    beam_offset = torch.arange(2 * K, device=device)

    for step in range(int(max_len.max())):
        log_probs, state = step_fn(prefix, state)
        log_probs = log_probs.float()
        if step < min_len:
            log_probs = log_probs.index_fill(1, torch.tensor([eos], device=log_probs.device), -inf)
        A, V = scores.size(0), log_probs.size(-1)
        top, index = best_continuations(scores, log_probs, min(2 * K, K * V))  # (A, 2K) best first
        beam, token = index // V, index % V
        is_eos = token == eos
        length = step + 1  # |Y| of every hypothesis made at this step, EOS counted

        finishing = is_eos[:, :K] & top[:, :K].isfinite()
        if finishing.any():
            n_finished += finishing.sum(dim=1)
            norm = (top[:, :K].double() / lp(length, alpha, length_penalty)).tolist()
            for a, j in finishing.nonzero().tolist():
                row = a * K + int(beam[a, j])
                hyp = Hypothesis(prefix[row, 1:].tolist(), norm[a][j], float(top[a, j]), True)
                kept = results[int(sent[a])]
                kept[:] = _rank(kept + [hyp])[:nbest]
                if len(kept) == nbest:
                    worst_kept[a] = kept[-1].score

        # The first K candidates that are not EOS stay live, in rank order.
        live = (is_eos.long() * 2 * K + beam_offset[: top.size(1)]).argsort(dim=1)[:, :K]  # (A, K)
        scores = top.gather(1, live)
        rows = (torch.arange(A, device=device) * K).unsqueeze(1) + beam.gather(1, live)  # (A, K) old rows
        prefix = torch.cat([prefix[rows.view(-1)], token.gather(1, live).view(-1, 1)], dim=1)

        at_limit = max_len[sent] <= length
        if stop == "finished":
            done = at_limit | (n_finished >= K)
        else:
            done = at_limit | (scores.max(dim=1).values.double() / lp_max[sent] <= worst_kept)
        if not done.any():
            if state is not None:
                state = state.reorder(rows.view(-1))
            continue
        live_norm = (scores.double() / lp(length, alpha, length_penalty)).tolist()
        for a in done.nonzero().view(-1).tolist():
            kept = results[int(sent[a])]
            if len(kept) < nbest:
                cut = [
                    Hypothesis(prefix[a * K + k, 1:].tolist(), live_norm[a][k], float(scores[a, k]), False)
                    for k in range(K)
                    if math.isfinite(live_norm[a][k])
                ]
                kept[:] = _rank(kept + cut)[:nbest]
        keep = ~done
        if not keep.any():
            break
        sent, scores, worst_kept, n_finished = sent[keep], scores[keep], worst_kept[keep], n_finished[keep]
        prefix = prefix.view(A, K, -1)[keep].view(-1, prefix.size(1))
        if state is not None:
            state = state.reorder(rows[keep].view(-1))
    return results


def _single_path(
    step_fn: StepFn,
    state: Any,
    batch_size: int,
    bos: int,
    eos: int,
    max_len: torch.Tensor,
    min_len: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
) -> list[Hypothesis]:
    """One hypothesis per sentence, extended by ``choose(log_probs (N, V)) -> tokens (N,)``."""
    max_len = _check(batch_size, max_len, min_len)
    device = max_len.device
    results: list[Hypothesis | None] = [None] * batch_size
    sent = torch.arange(batch_size, device=device)  # (N,) original index of each live row
    prefix = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)  # (N, t)
    total = torch.zeros(batch_size, dtype=torch.double, device=device)
    for step in range(int(max_len.max()) if batch_size else 0):
        log_probs, state = step_fn(prefix, state)
        log_probs = log_probs.float()
        if step < min_len:
            log_probs = log_probs.index_fill(1, torch.tensor([eos], device=log_probs.device), -float("inf"))
        token = choose(log_probs)
        total = total + log_probs.gather(1, token.unsqueeze(1)).squeeze(1).double()
        prefix = torch.cat([prefix, token.unsqueeze(1)], dim=1)
        ended = token == eos
        done = ended | (max_len[sent] <= step + 1)
        if not done.any():
            continue
        for n in done.nonzero().view(-1).tolist():
            end = prefix.size(1) - 1 if bool(ended[n]) else prefix.size(1)
            score = float(total[n])
            results[int(sent[n])] = Hypothesis(prefix[n, 1:end].tolist(), score, score, bool(ended[n]))
        keep = ~done
        if not keep.any():
            break
        sent, prefix, total = sent[keep], prefix[keep], total[keep]
        if state is not None:
            state = state.reorder(keep.nonzero().view(-1))
    return results  # type: ignore[return-value]


def greedy_search(
    step_fn: StepFn, state: Any, batch_size: int, bos: int, eos: int, max_len: torch.Tensor, min_len: int = 0
) -> list[Hypothesis]:
    """The most probable token at every step. Nothing is ranked, so ``score == log_prob``."""
    return _single_path(step_fn, state, batch_size, bos, eos, max_len, min_len, lambda lp: lp.argmax(dim=-1))


def filter_logits(
    log_probs: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Logits of the sampling distribution: divided by the temperature, then only the ``top_k``
    most probable tokens (0: all), then the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2020); removed tokens get -inf."""
    logits = log_probs / temperature
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        remove = torch.empty_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)  # unsorted
        logits = logits.masked_fill(remove, -float("inf"))
    return logits


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature > 0:
        raise AiaynError(f"temperature must be positive, got {temperature}")
    if top_k < 0 or not 0 < top_p <= 1:
        raise AiaynError(f"top_k must be ≥ 0 and top_p in (0, 1], got top_k={top_k}, top_p={top_p}")


def sample(
    step_fn: StepFn,
    state: Any,
    batch_size: int,
    bos: int,
    eos: int,
    max_len: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    min_len: int = 0,
) -> list[Hypothesis]:
    """Ancestral sampling from the filtered distribution (see ``filter_logits``). ``log_prob``
    and ``score`` are the model's own log-probability of the sample, before filtering."""
    check_sampling(temperature, top_k, top_p)

    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        probs = filter_logits(log_probs, temperature, top_k, top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _single_path(step_fn, state, batch_size, bos, eos, max_len, min_len, choose)

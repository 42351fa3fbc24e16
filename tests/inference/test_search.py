"""Search over scripted probability tables with hand-derived winners (after fairseq's
test_sequence_generator). Tokens: BOS=0, EOS=1, and the words a=2, b=3, c=4, d=5.
|Y| in the length penalty counts EOS: "a EOS" has |Y| = 2."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from aiayn.config import AiaynError
from aiayn.inference.search import Hypothesis, beam_search, filter_logits, greedy_search, lp, sample

BOS, EOS, a, b, c, d = range(6)
V = 6


def gnmt(n: int, alpha: float = 0.6) -> float:
    return ((5 + n) / 6) ** alpha


class Rows:
    """A stand-in for the decoder's KV cache: each row remembers its sentence and the tokens it
    has seen, and the step_fns below read the prefix from it plus only the newest token, so a
    missing or wrong reorder looks up the wrong table."""

    def __init__(self, ids: torch.Tensor, seen: torch.Tensor | None = None):
        self.ids = ids
        self.seen = seen if seen is not None else torch.zeros(len(ids), 0, dtype=torch.long)

    def reorder(self, index: torch.Tensor) -> Rows:
        return Rows(self.ids[index], self.seen[index])

    def step(self, prefix: torch.Tensor) -> tuple[Rows, list[list[int]]]:
        """Append the newest token; return the new state and each row's tokens after BOS."""
        seen = torch.cat([self.seen, prefix[:, -1:]], dim=1)
        return Rows(self.ids, seen), seen[:, 1:].tolist()


def scripted(*tables: dict[tuple[int, ...] | None, dict[int, float]]):
    """step_fn over one probability table per sentence, keyed by the prefix without BOS.
    Unlisted prefixes get the row under key None, else uniform over the five non-BOS tokens."""
    calls: list[int] = []

    def step_fn(prefix: torch.Tensor, state: Rows):
        calls.append(prefix.size(0))
        state, prefixes = state.step(prefix)
        out = torch.full((prefix.size(0), V), -math.inf)
        for row, (sid, p) in enumerate(zip(state.ids.tolist(), prefixes)):
            probs = tables[sid].get(tuple(p), tables[sid].get(None, {t: 0.2 for t in range(1, V)}))
            for t, pr in probs.items():
                out[row, t] = math.log(pr) if pr > 0 else -math.inf
        return out, state

    step_fn.calls = calls  # type: ignore[attr-defined]
    return step_fn


def run_beam(table, max_len=10, **kw) -> list[Hypothesis]:
    step = scripted(table)
    return beam_search(step, Rows(torch.zeros(1, dtype=torch.long)), 1, BOS, EOS, torch.tensor([max_len]), **kw)[0]


def random_tables(seed: int, vocab: int = 8):
    """step_fn with a random but fixed distribution per (sentence, prefix); EOS grows likelier with length."""

    def step_fn(prefix: torch.Tensor, state: Rows):
        state, prefixes = state.step(prefix)
        rows = []
        for sid, p in zip(state.ids.tolist(), prefixes):
            g = torch.Generator().manual_seed(hash((seed, sid, *p)) & 0x7FFFFFFF)
            logits = torch.randn(vocab, generator=g) * 2
            logits[BOS] = -math.inf
            logits[EOS] += 0.4 * len(p) - 1.0
            rows.append(logits.log_softmax(-1))
        return torch.stack(rows), state

    return step_fn


# Short "a EOS" (0.6 · 0.6) is likelier than long "b c d EOS" (0.35 · 0.97³), but the GNMT
# penalty with α = 0.6 divides the long one by more and it wins; with α = 0 the short one does.
PENALTY_FLIPS = {
    (): {a: 0.6, b: 0.35, c: 0.05},
    (a,): {EOS: 0.6, a: 0.1, b: 0.1, c: 0.1, d: 0.1},
    (b,): {c: 0.97, a: 0.03},
    (b, c): {d: 0.97, a: 0.03},
    (b, c, d): {EOS: 0.97, a: 0.03},
}


def test_length_penalty_changes_the_winner():
    best = run_beam(PENALTY_FLIPS, beam_size=2, alpha=0.6)[0]
    assert best.tokens == [b, c, d] and best.finished
    assert best.log_prob == pytest.approx(math.log(0.35 * 0.97**3), abs=1e-6)
    assert best.score == pytest.approx(math.log(0.35 * 0.97**3) / gnmt(4), abs=1e-6)
    short = math.log(0.6 * 0.6) / gnmt(2)
    assert best.score > short

    for kw in (dict(alpha=0.0), dict(length_penalty="none")):
        best = run_beam(PENALTY_FLIPS, beam_size=2, **kw)[0]
        assert best.tokens == [a] and best.score == pytest.approx(math.log(0.36), abs=1e-6)


# Step 1 finishes "b EOS" (0.35 · 0.97) and "a EOS" (0.65 · 0.52): as many finished as beams,
# and the best beam is finished, so both naive stopping rules would stop. "a d d d d EOS"
# (0.65 · 0.48 · 0.99⁴) has the best GNMT score and is found four steps later.
LATE_WINNER = {
    (): {a: 0.65, b: 0.35},
    (a,): {EOS: 0.52, d: 0.48},
    (b,): {EOS: 0.97, c: 0.03},
    (a, d): {d: 0.99, c: 0.01},
    (a, d, d): {d: 0.99, c: 0.01},
    (a, d, d, d): {d: 0.99, c: 0.01},
    (a, d, d, d, d): {EOS: 0.99, c: 0.01},
}


def test_longer_hypothesis_wins_after_the_first_eos():
    step = scripted(LATE_WINNER)
    hyps = beam_search(
        step, Rows(torch.zeros(1, dtype=torch.long)), 1, BOS, EOS, torch.tensor([50]), beam_size=2, nbest=2
    )[0]
    long_, short = math.log(0.65 * 0.48 * 0.99**4), math.log(0.35 * 0.97)
    assert [h.tokens for h in hyps] == [[a, d, d, d, d], [b]]
    assert [h.score for h in hyps] == pytest.approx([long_ / gnmt(6), short / gnmt(2)], abs=1e-6)
    # It still stops early: after step 5 the best live beam, "a d d d d c" (log 0.65·0.48·0.99³·0.01
    # ≈ -5.8), cannot beat the worst kept (-0.98) even at lp(50) ≈ 3.78, so 6 of 50 steps ran.
    assert len(step.calls) == 6


def test_the_finished_rule_stops_once_beam_size_hypotheses_ended():
    """fairseq's and CTranslate2's rule: two hypotheses ended at step 2, so a beam of two stops
    there and misses the late winner that the bound rule finds."""
    step = scripted(LATE_WINNER)
    state = Rows(torch.zeros(1, dtype=torch.long))
    hyps = beam_search(step, state, 1, BOS, EOS, torch.tensor([50]), beam_size=2, nbest=2, stop="finished")[0]
    assert [h.tokens for h in hyps] == [[b], [a]]
    assert [h.score for h in hyps] == pytest.approx(
        [math.log(0.35 * 0.97) / gnmt(2), math.log(0.65 * 0.52) / gnmt(2)], abs=1e-6
    )
    assert len(step.calls) == 2


@pytest.mark.parametrize("seed", range(4))
def test_the_finished_rule_never_outscores_the_bound_rule(seed):
    """Both rules rank the same candidates; the bound rule only searches longer, so its best
    hypothesis scores at least as high, sentence by sentence."""
    max_len = torch.tensor([9, 6, 12])
    runs = {
        stop: beam_search(
            random_tables(seed), Rows(torch.arange(3)), 3, BOS, EOS, max_len, beam_size=3, nbest=2, stop=stop
        )
        for stop in ("bound", "finished")
    }
    for exact, quick in zip(runs["bound"], runs["finished"]):
        assert exact[0].score >= quick[0].score - 1e-9


def test_eos_best_at_step_zero_does_not_fill_the_beam_with_copies():
    table = {(): {EOS: 0.5, a: 0.3, b: 0.2}, (a,): {EOS: 0.9, c: 0.1}, (b,): {EOS: 0.9, c: 0.1}}
    hyps = run_beam(table, beam_size=3, nbest=3, alpha=0.0)
    assert [h.tokens for h in hyps] == [[], [a], [b]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.5), math.log(0.27), math.log(0.18)], abs=1e-6)
    assert all(h.finished for h in hyps)


def test_only_hypotheses_with_nonzero_probability_are_returned():
    hyps = run_beam({(): {a: 1.0}, (a,): {EOS: 1.0}}, beam_size=3, nbest=3)
    assert hyps == [Hypothesis([a], 0.0, 0.0, True)]


def test_scores_by_hand_for_both_penalty_formulas():
    table = {(): {EOS: 0.5, a: 0.3, b: 0.2}, (a,): {EOS: 0.9, c: 0.1}}
    gn = run_beam(table, beam_size=2, nbest=2, alpha=0.6, length_penalty="gnmt")
    # |Y| counts EOS: [] has |Y| = 1, [a] has |Y| = 2. GNMT: lp(1) = 1, lp(2) = (7/6)^0.6.
    assert [h.tokens for h in gn] == [[], [a]]
    assert [h.score for h in gn] == pytest.approx([math.log(0.5), math.log(0.27) / (7 / 6) ** 0.6], abs=1e-6)
    # fairseq |Y|^α with α = 1: log(0.27)/2 = -0.655 beats log(0.5)/1 = -0.693, so the order flips.
    fs = run_beam(table, beam_size=2, nbest=2, alpha=1.0, length_penalty="fairseq")
    assert [h.tokens for h in fs] == [[a], []]
    assert [h.score for h in fs] == pytest.approx([math.log(0.27) / 2, math.log(0.5)], abs=1e-6)
    assert lp(3, 0.6, "gnmt") == pytest.approx((8 / 6) ** 0.6) and lp(3, 0.6, "fairseq") == pytest.approx(3**0.6)
    assert lp(7, 0.6, "none") == 1.0


def test_never_eos_respects_max_len_and_returns_nbest():
    # P(a) at step t is 0.9, 0.8, 0.7, 0.6, 0.55; EOS never. Best: a⁵; second: flip the last step.
    p = [0.9, 0.8, 0.7, 0.6, 0.55]
    table = {}
    for t in range(5):
        for prefix in itertools.product((a, b), repeat=t):
            table[prefix] = {a: p[t], b: 1 - p[t]}
    step = scripted(table)
    hyps = beam_search(
        step, Rows(torch.zeros(1, dtype=torch.long)), 1, BOS, EOS, torch.tensor([5]), beam_size=2, nbest=2
    )[0]
    assert [h.tokens for h in hyps] == [[a] * 5, [a, a, a, a, b]]
    assert not any(h.finished for h in hyps)
    best = math.log(0.9 * 0.8 * 0.7 * 0.6 * 0.55)
    assert hyps[0].score == pytest.approx(best / gnmt(5), abs=1e-6)
    assert len(step.calls) == 5
    g = greedy_search(scripted(table), Rows(torch.zeros(1, dtype=torch.long)), 1, BOS, EOS, torch.tensor([5]))[0]
    assert g.tokens == [a] * 5 and not g.finished and g.log_prob == pytest.approx(best, abs=1e-6)


def test_min_len_masks_eos():
    table = {(): {EOS: 0.6, a: 0.4}, (a,): {EOS: 0.7, b: 0.3}, (a, b): {EOS: 0.9, c: 0.1}}
    rows = Rows(torch.zeros(1, dtype=torch.long))
    assert greedy_search(scripted(table), rows, 1, BOS, EOS, torch.tensor([9]))[0].tokens == []
    g = greedy_search(scripted(table), rows, 1, BOS, EOS, torch.tensor([9]), min_len=2)[0]
    assert g.tokens == [a, b] and g.finished
    assert g.log_prob == pytest.approx(math.log(0.4 * 0.3 * 0.9), abs=1e-6)  # the model's probability, not renormalised
    hyps = run_beam(table, beam_size=2, nbest=2, min_len=2)
    assert all(len(h.tokens) >= 2 for h in hyps) and hyps[0].tokens == [a, b]


def test_beam_one_equals_greedy_on_random_tables():
    n = 12
    max_len = torch.randint(1, 15, (n,), generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        step = random_tables(seed)
        greedy = greedy_search(step, Rows(torch.arange(n)), n, BOS, EOS, max_len)
        beam = beam_search(step, Rows(torch.arange(n)), n, BOS, EOS, max_len, beam_size=1, length_penalty="none")
        for g, (h,) in zip(greedy, beam):
            assert (g.tokens, g.finished) == (h.tokens, h.finished)
            assert g.log_prob == pytest.approx(h.log_prob, abs=1e-5)


@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_sentence_alone_equals_sentence_in_batch(search):
    step = random_tables(7)
    max_len = torch.tensor([3, 20, 9, 1, 14])

    def run(ids: list[int]):
        ids_t = torch.tensor(ids)
        if search == "greedy":
            return greedy_search(step, Rows(ids_t), len(ids), BOS, EOS, max_len[ids_t])
        return beam_search(step, Rows(ids_t), len(ids), BOS, EOS, max_len[ids_t], beam_size=4, nbest=3)

    batch = run([0, 1, 2, 3, 4])
    for i in range(5):
        assert run([i])[0] == batch[i]
    assert run([4, 2])[1] == batch[2]


def test_finished_sentences_leave_the_batch():
    table = {(): {EOS: 0.9, a: 0.1}}
    step = scripted(table, {None: {a: 0.7, b: 0.3}})
    hyps = beam_search(step, Rows(torch.tensor([0, 1])), 2, BOS, EOS, torch.tensor([4, 4]), beam_size=2)
    # Sentence 0 ends at step 0 (EOS 0.9 beats anything a 0.1 prefix can reach); sentence 1
    # never ends before max_len, and only its two beams are computed after step 0.
    assert hyps[0][0].tokens == [] and hyps[1][0].tokens == [a] * 4
    assert step.calls == [4, 2, 2, 2]


def test_nbest_is_ordered_and_distinct():
    step = random_tables(3)
    n = 6
    out = beam_search(step, Rows(torch.arange(n)), n, BOS, EOS, torch.full((n,), 12), beam_size=5, nbest=5)
    for hyps in out:
        assert len(hyps) == 5
        finished = [h for h in hyps if h.finished]
        assert hyps[: len(finished)] == finished
        scores = [h.score for h in finished]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / gnmt(len(h.tokens) + h.finished), abs=1e-6)


def test_sampling_top_k_one_is_greedy_and_seeded_runs_repeat():
    step = random_tables(5)
    n = 10
    max_len = torch.full((n,), 12)
    greedy = greedy_search(step, Rows(torch.arange(n)), n, BOS, EOS, max_len)
    top1 = sample(step, Rows(torch.arange(n)), n, BOS, EOS, max_len, top_k=1, temperature=0.7)
    assert top1 == greedy

    def draw(seed: int):
        gen = torch.Generator().manual_seed(seed)
        return sample(step, Rows(torch.arange(n)), n, BOS, EOS, max_len, generator=gen)

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_sampling_frequencies_follow_the_filtered_distribution():
    table = {(): {a: 0.5, b: 0.3, EOS: 0.2}, (a,): {EOS: 1.0}, (b,): {EOS: 1.0}}
    n = 4000

    def freq(**kw) -> list[float]:
        gen = torch.Generator().manual_seed(0)
        out = sample(
            scripted(table),
            Rows(torch.zeros(n, dtype=torch.long)),
            n,
            BOS,
            EOS,
            torch.full((n,), 5),
            generator=gen,
            **kw,
        )
        first = [h.tokens[0] if h.tokens else EOS for h in out]
        return [first.count(t) / n for t in (a, b, EOS)]

    assert freq() == pytest.approx([0.5, 0.3, 0.2], abs=0.03)
    assert freq(top_p=0.6) == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0], abs=0.03)  # EOS lies beyond 0.8 ≥ 0.6
    z = 0.5**0.5 + 0.3**0.5 + 0.2**0.5
    assert freq(temperature=2.0) == pytest.approx([0.5**0.5 / z, 0.3**0.5 / z, 0.2**0.5 / z], abs=0.03)
    assert freq(top_k=2) == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0], abs=0.03)


def test_filter_logits_by_hand():
    log_probs = torch.tensor([[0.1, 0.4, 0.3, 0.2]]).log()
    kept = filter_logits(log_probs, top_p=0.7).isfinite().tolist()[0]
    assert kept == [False, True, True, False]  # 0.4 + 0.3 reaches 0.7


def test_bad_arguments_are_user_errors():
    step = random_tables(0)
    with pytest.raises(AiaynError, match="length penalty"):
        beam_search(step, Rows(torch.arange(1)), 1, BOS, EOS, torch.tensor([5]), length_penalty="hf")
    with pytest.raises(AiaynError, match="nbest"):
        beam_search(step, Rows(torch.arange(1)), 1, BOS, EOS, torch.tensor([5]), beam_size=2, nbest=3)
    with pytest.raises(AiaynError, match="stopping rule"):
        beam_search(step, Rows(torch.arange(1)), 1, BOS, EOS, torch.tensor([5]), stop="first")
    with pytest.raises(AiaynError, match="temperature"):
        sample(step, Rows(torch.arange(1)), 1, BOS, EOS, torch.tensor([5]), temperature=0.0)
    with pytest.raises(AiaynError, match="max_len"):
        greedy_search(step, Rows(torch.arange(2)), 2, BOS, EOS, torch.tensor([5]))


# Brute force: every hypothesis of a small vocabulary (three words and EOS) scored by hand, against
# beam search wide enough that it prunes nothing: at step t there are 3^t live prefixes and 4·3^t
# continuations, so with max_len 3 a beam of 36 keeps every one and beam search is exhaustive.
WORDS_3 = (2, 3, 4)  # random_tables(seed, vocab=5): BOS 0 (never), EOS 1, three words
WIDE = 4 * 3**2


def log_prob(step_fn, sentence: int, tokens: tuple[int, ...]) -> float:
    """log P(tokens) under ``step_fn``, one prefix at a time."""
    state, total = Rows(torch.tensor([sentence])), 0.0
    prefix = torch.tensor([[BOS]])
    for token in tokens:
        log_probs, state = step_fn(prefix, state)
        total += float(log_probs[0, token])
        prefix = torch.cat([prefix, torch.tensor([[token]])], dim=1)
    return total


def by_hand(length: int, alpha: float, penalty: str) -> float:
    """The length penalty written out: GNMT ((5 + |Y|) / 6)^α, fairseq |Y|^α, or none."""
    return {"gnmt": ((5 + length) / 6) ** alpha, "fairseq": length**alpha, "none": 1.0}[penalty]


def every_hypothesis(step_fn, sentence: int, max_len: int, alpha: float, penalty: str) -> list[Hypothesis]:
    """All of them, ranked as beam search ranks (finished first, then by score): those that end
    with EOS within ``max_len`` steps, and those cut off after ``max_len`` words."""
    found = []
    for n in range(max_len + 1):
        for words in itertools.product(WORDS_3, repeat=n):
            finished = n < max_len
            total = log_prob(step_fn, sentence, words + (EOS,) if finished else words)
            length = n + 1 if finished else n  # |Y| counts EOS
            found.append(Hypothesis(list(words), total / by_hand(length, alpha, penalty), total, finished))
    return sorted(found, key=lambda h: (not h.finished, -h.score))


def assert_same(got: list[Hypothesis], expected: list[Hypothesis]) -> None:
    assert [(h.tokens, h.finished) for h in got] == [(h.tokens, h.finished) for h in expected]
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert [h.log_prob for h in got] == pytest.approx([h.log_prob for h in expected], abs=1e-5)


@pytest.mark.parametrize(
    "penalty, alpha", [("gnmt", 0.6), ("gnmt", 2.0), ("fairseq", 0.6), ("fairseq", 1.5), ("none", 0.0)]
)
@pytest.mark.parametrize("nbest", [1, 4, 13, 20])  # 13 finished hypotheses exist; 20 needs cut-off ones too
def test_wide_beam_equals_brute_force(penalty, alpha, nbest):
    max_len = torch.tensor([3, 2, 1, 3])  # a batch: each sentence its own table and limit
    # In seed 5's first sentence a hypothesis finished at step 2 beats the best of step 1: a stop
    # rule that bounded live beams by the current length's penalty, not max_len's, would miss it.
    for seed in (0, 5):
        step = random_tables(seed, vocab=5)
        got = beam_search(
            step,
            Rows(torch.arange(4)),
            4,
            BOS,
            EOS,
            max_len,
            beam_size=WIDE,
            alpha=alpha,
            length_penalty=penalty,
            nbest=nbest,
        )
        for sentence, limit in enumerate(max_len.tolist()):
            expected = every_hypothesis(step, sentence, limit, alpha, penalty)
            assert_same(got[sentence], expected[:nbest])


# A garden path: "a" is likelier than "b" at step 0, but every continuation of "a" is poor while
# "b EOS" is almost certain. A beam of one follows "a"; a beam of two keeps "b" and finds the best.
GARDEN = {
    (): {a: 0.55, b: 0.45},
    (a,): {EOS: 0.4, c: 0.3, d: 0.3},
    (b,): {EOS: 0.99, c: 0.01},
    (a, c): {EOS: 0.5, c: 0.5},
    (a, d): {EOS: 0.5, d: 0.5},
    (b, c): {EOS: 1.0},
}


def test_a_narrow_beam_prunes_the_best_hypothesis_and_a_wider_one_keeps_it():
    best = math.log(0.45 * 0.99) / gnmt(2)
    assert max(math.log(0.55 * 0.4) / gnmt(2), math.log(0.55 * 0.3 * 0.5) / gnmt(3)) < best
    narrow = run_beam(GARDEN, max_len=3, beam_size=1)[0]
    assert narrow.tokens == [a] and narrow.score == pytest.approx(math.log(0.55 * 0.4) / gnmt(2), abs=1e-6)
    wide = run_beam(GARDEN, max_len=3, beam_size=2)[0]
    assert wide.tokens == [b] and wide.score == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("beam", [1, 2, 3, 5])
def test_a_pruning_beam_returns_true_scores_and_never_beats_brute_force(beam):
    """Narrower than exhaustive, beam search may miss hypotheses, but what it returns are real
    hypotheses with their exact scores, ranked, and none better than the best that exists."""
    for seed in range(6):
        step = random_tables(seed, vocab=5)
        every = every_hypothesis(step, 0, 3, 0.6, "gnmt")
        by_tokens = {(tuple(h.tokens), h.finished): h for h in every}
        got = beam_search(step, Rows(torch.arange(1)), 1, BOS, EOS, torch.tensor([3]), beam_size=beam, nbest=beam)[0]
        assert_same(got, [by_tokens[tuple(h.tokens), h.finished] for h in got])
        assert got == sorted(got, key=lambda h: (not h.finished, -h.score))
        assert (not got[0].finished, -got[0].score) >= (not every[0].finished, -every[0].score - 1e-5)


def _plain_topk(scores: torch.Tensor, log_probs: torch.Tensor, n: int):
    A, K = scores.shape
    return (scores.reshape(-1, 1) + log_probs).view(A, -1).topk(n, dim=1)


@pytest.mark.parametrize("vocab, width", [(8000, 64), (96, 32), (48, 16), (1000, 0)])
def test_best_continuations_equal_one_topk_over_all_sums(vocab, width):
    """Chunked or not (1000 has no width in CHUNK_WIDTHS), the same values and indices as one
    topk over every sum; beams at -inf as at step 0, and chunks holding several winners."""
    from aiayn.inference.search import CHUNK_WIDTHS, best_continuations

    assert next((w for w in CHUNK_WIDTHS if vocab % w == 0), 0) == width
    g = torch.Generator().manual_seed(vocab)
    A, K = 5, 4
    scores = torch.randn(A, K, generator=g) * 3
    scores[0, 1:] = -math.inf
    log_probs = torch.randn(A * K, vocab, generator=g).log_softmax(-1)
    log_probs[4 * K + 2, :8] = 5.0 + torch.arange(8.0)  # sentence 4: all winners in one chunk of one beam
    for n in (1, 2 * K):
        top, index = best_continuations(scores, log_probs, n)
        want_top, want_index = _plain_topk(scores, log_probs, n)
        assert torch.equal(top, want_top) and torch.equal(index, want_index)


def test_best_continuations_with_ties_match_brute_force():
    """Many equal sums: the values are the n best of the sorted list of all K×V sums, and each
    index is a distinct continuation whose sum is the value reported beside it."""
    from aiayn.inference.search import best_continuations

    g = torch.Generator().manual_seed(3)
    A, K, vocab, n = 6, 3, 128, 6
    scores = torch.randint(-2, 1, (A, K), generator=g).float()
    log_probs = -torch.randint(0, 3, (A * K, vocab), generator=g).float()  # values in {0, -1, -2}
    top, index = best_continuations(scores, log_probs, n)
    for a in range(A):
        sums = sorted(
            (float(scores[a, k] + log_probs[a * K + k, v]) for k in range(K) for v in range(vocab)), reverse=True
        )
        assert top[a].tolist() == sums[:n]
        assert len(set(index[a].tolist())) == n
        for value, i in zip(top[a].tolist(), index[a].tolist()):
            assert float(scores[a, i // vocab] + log_probs[a * K + i // vocab, i % vocab]) == value


def test_beam_search_same_with_and_without_chunked_ranking(monkeypatch):
    """A whole search over a random model with 256 words: identical hypotheses whether the
    continuations are ranked by chunks or by one topk."""
    import aiayn.inference.search as search

    g = torch.Generator().manual_seed(0)
    table = torch.randn(12, 256, 256, generator=g).log_softmax(-1)  # (last token, position) -> next-token log-probs

    def step_fn(prefix, state):
        return table[prefix[:, -1] % 12, prefix.size(1) - 1], state

    def run():
        return beam_search(step_fn, None, 3, BOS, EOS, torch.tensor([9, 12, 30]), beam_size=5, nbest=5)

    chunked = run()
    monkeypatch.setattr(search, "CHUNK_WIDTHS", ())
    assert run() == chunked

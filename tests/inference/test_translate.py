"""Translator on a tiny random-weight model (preset tiny, vocabulary 64) with a SentencePiece
model trained here: cached == uncached decoding, batch invariance, limits, order, edge cases,
and the `aiayn translate` command end to end, reading its input a chunk at a time and refusing an
endless line."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from toydata import TOY_WORDS, save_run, train_toy_tokenizer

from aiayn.cli import main
from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError, Config, preset
from aiayn.data.batching import source_row
from aiayn.data.text import MAX_LINE_BYTES, arriving_chunks
from aiayn.data.tokenizer import Tokenizer
from aiayn.inference import search
from aiayn.inference.translate import BANNED, Translator, format_translations, length_batches, make_step_fn
from aiayn.models.transformer import Transformer

LINES = [
    "en el principio",
    "dios creo la luz y el agua",
    "la noche",
    "el mar y la tierra y los cielos y el dia",
    "luz",
    "agua agua mar",
    "el principio de los cielos",
]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return train_toy_tokenizer(tmp_path_factory.mktemp("spm"))


def tiny(max_len: int = 256, seed: int = 0) -> tuple[Transformer, Config]:
    """A random tiny model whose embeddings are scaled up, so its distributions are peaked
    enough that beam search meets no near-ties."""
    cfg = preset("tiny")
    cfg.model.max_len = max_len
    torch.manual_seed(seed)
    model = Transformer(cfg.model).eval()
    with torch.no_grad():
        model.decoder.embedding.tokens.weight.mul_(4)
    return model, cfg


@pytest.fixture(scope="module")
def translator(tokenizer) -> Translator:
    model, cfg = tiny()
    return Translator(model, tokenizer, cfg, device="cpu")


def encoded(model: Transformer, rows: list[list[int]]):
    lengths = torch.tensor([len(r) for r in rows])
    src = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for b, r in enumerate(rows):
        src[b, : len(r)] = torch.tensor(r)
    mask = torch.arange(src.size(1)) < lengths[:, None]
    return model.encode(src, mask)[0], mask, lengths


@dataclass
class Encoded:
    """The reference's search state: the encoder output, one row per decoder row."""

    memory: torch.Tensor  # (N, S, D)
    src_mask: torch.Tensor  # (N, S)

    def reorder(self, index: torch.Tensor) -> Encoded:
        return Encoded(self.memory.index_select(0, index), self.src_mask.index_select(0, index))


def uncached_step_fn(model: Transformer, memory: torch.Tensor, mask: torch.Tensor):
    """The reference for the cached step: re-run the decoder over the whole prefix every step."""

    def step(prefix: torch.Tensor, enc: Encoded) -> tuple[torch.Tensor, Encoded]:
        logits, _, _ = model.decode(prefix, memory=enc.memory, src_mask=enc.src_mask)  # (N, t, V)
        log_probs = logits[:, -1].float().log_softmax(dim=-1)
        log_probs[:, list(BANNED)] = -float("inf")
        return log_probs, enc

    return step, Encoded(memory, mask)


@torch.inference_mode()
def test_cached_and_uncached_decoding_agree():
    model, _ = tiny()
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(4, 64, (n,), generator=g).tolist() + [EOS_ID] for n in (3, 9, 6)]
    memory, mask, lengths = encoded(model, rows)
    cached, cache = make_step_fn(model, memory, mask)
    full, state = uncached_step_fn(model, memory, mask)
    prefix = torch.full((3, 1), BOS_ID)
    for _ in range(12):  # teacher-forced random prefixes: the same log-probs at every step
        a, cache = cached(prefix, cache)
        b, state = full(prefix, state)
        assert torch.equal(a.isinf(), b.isinf())
        assert torch.allclose(a[a.isfinite()], b[b.isfinite()], atol=1e-5)
        prefix = torch.cat([prefix, torch.randint(4, 64, (3, 1), generator=g)], dim=1)

    max_len = lengths + 8
    for run in (
        lambda f, s: search.beam_search(f, s, 3, BOS_ID, EOS_ID, max_len, beam_size=4, nbest=4),
        lambda f, s: [[h] for h in search.greedy_search(f, s, 3, BOS_ID, EOS_ID, max_len)],
    ):
        with_cache = run(*make_step_fn(model, memory, mask))
        without = run(*uncached_step_fn(model, memory, mask))
        for x, y in zip(with_cache, without):
            assert [h.tokens for h in x] == [h.tokens for h in y]
            assert [h.score for h in x] == pytest.approx([h.score for h in y], abs=1e-5)


@pytest.mark.parametrize("beam", [4, 1])
def test_sentence_alone_equals_sentence_in_padded_batch(translator, beam):
    batch = translator.translate(LINES, beam_size=beam, nbest=min(beam, 2))
    assert len({t[0].text for t in batch}) > 2  # different inputs, different outputs: the order is checked
    for line, together in zip(LINES, batch):
        alone = translator.translate([line], beam_size=beam, nbest=min(beam, 2))[0]
        assert [t.tokens for t in alone] == [t.tokens for t in together]
        assert [t.score for t in alone] == pytest.approx([t.score for t in together], abs=1e-4)


def test_order_is_restored_across_length_sorted_batches(translator):
    one_batch = translator.translate(LINES, batch_tokens=10_000)
    many = translator.translate(LINES, batch_tokens=8)  # about one sentence per batch, longest first
    assert [t[0].text for t in many] == [t[0].text for t in one_batch]
    assert length_batches([3, 9, 1, 9, 4], 18) == [[1, 3], [4, 0, 2]]  # 2×9 ≤ 18, 3×4 ≤ 18


def test_output_length_is_source_length_plus_offset(translator, tokenizer):
    model, cfg = tiny()
    cfg.decode.max_len_offset = 2
    short = Translator(model, tokenizer, cfg)
    ids = tokenizer.encode_batch(LINES)
    out = short.translate(LINES, beam_size=4)
    for x, (best,) in zip(ids, out):
        # |Y| (EOS counted) ≤ |X| (EOS counted) + offset
        assert len(best.tokens) + best.finished <= len(x) + 1 + 2
    assert any(len(best.tokens) == len(x) + 3 and not best.finished for x, (best,) in zip(ids, out))


def test_empty_lines_give_empty_output(translator):
    out = translator.translate(["", "   ", LINES[0], ""])
    assert [t[0].text for t in out[:2]] == ["", ""] and out[3][0].text == ""
    assert out[2][0].text == translator.translate([LINES[0]])[0][0].text
    assert translator.translate([]) == []


def test_over_long_input_is_truncated_with_one_warning(tokenizer, capsys):
    model, cfg = tiny(max_len=24)
    t = Translator(model, tokenizer, cfg)
    long_line = " ".join(TOY_WORDS * 5)
    out = t.translate([long_line, LINES[1], long_line], beam_size=2)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "2 input line(s)" in err and "line 1" in err
    assert all(len(h[0].tokens) <= 24 for h in out)
    truncated = tokenizer.decode(source_row(tokenizer.encode(long_line), 24)[:-1])
    assert out[0][0].tokens == t.translate([truncated], beam_size=2)[0][0].tokens


def test_decodes_in_eval_mode_and_restores_train_mode(tokenizer):
    model, cfg = tiny()
    cfg.model.dropout = 0.5
    noisy = Transformer(cfg.model)
    noisy.load_state_dict(model.state_dict())
    reference = Translator(model, tokenizer, cfg).translate(LINES)
    noisy.train()
    assert Translator(noisy, tokenizer, cfg).translate(LINES) == reference  # no dropout noise
    assert noisy.training


def test_pad_and_bos_are_never_generated(tokenizer):
    class PrefersSpecials(Transformer):
        def decode(self, *args, **kwargs):
            logits, cache, weights = super().decode(*args, **kwargs)
            logits[..., [PAD_ID, BOS_ID]] += 100.0
            return logits, cache, weights

    model, cfg = tiny()
    odd = PrefersSpecials(cfg.model).eval()
    odd.load_state_dict(model.state_dict())
    out = Translator(odd, tokenizer, cfg).translate(LINES, nbest=4)
    assert all(not {PAD_ID, BOS_ID} & set(h.tokens) for nbest in out for h in nbest)


def test_sampling(translator):
    greedy = translator.translate(LINES, beam_size=1)
    top1 = translator.translate(LINES, sample=True, top_k=1)
    assert [t[0].tokens for t in top1] == [t[0].tokens for t in greedy]
    a = translator.translate(LINES, sample=True, nbest=3, seed=5)
    assert a == translator.translate(LINES, sample=True, nbest=3, seed=5)
    assert all(len(t) == 3 for t in a)


def test_nbest_format():
    from aiayn.inference.translate import Translation

    ts = [Translation([5], -0.5, -0.6, True, "hola"), Translation([6], -1.25, -1.5, True, "adios")]
    assert format_translations(7, ts, 2) == "7\t-0.5000\thola\n7\t-1.2500\tadios\n"
    assert format_translations(7, ts, 1) == "hola\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer) -> Path:
    """A run folder as training writes it: a checkpoint and the tokenizer beside it."""
    run = tmp_path_factory.mktemp("run")
    save_run(run, *tiny())
    tokenizer.copy_to(run)
    return run


def test_translate_command_with_files(run_dir, translator, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES[:4] + ["", LINES[4]]) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "translate",
                "--model",
                str(run_dir),
                "--input",
                str(src),
                "--output",
                str(tmp_path / "o.txt"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    got = (tmp_path / "o.txt").read_text(encoding="utf-8").split("\n")[:-1]
    expected = [t[0].text for t in translator.translate(LINES[:4] + ["", LINES[4]])]
    assert got == expected

    assert (
        main(
            [
                "translate",
                "--model",
                str(run_dir),
                "--input",
                str(src),
                "--output",
                str(tmp_path / "n.txt"),
                "--nbest",
                "3",
                "--beam",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = [line.split("\t") for line in (tmp_path / "n.txt").read_text(encoding="utf-8").splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 5, 5]
    assert [r[2] for r in rows if r[0] == "0"] == [t.text for t in translator.translate([LINES[0]], nbest=3)[0]]


def test_translate_command_errors_are_one_line(run_dir, tmp_path, capsys):
    assert main(["translate", "--model", str(tmp_path / "nothing"), "--input", "x"]) == 2
    assert main(["translate", "--model", str(run_dir), "--input", str(tmp_path / "missing.txt")]) == 2
    assert (
        main(
            ["translate", "--model", str(run_dir), "--beam", "2", "--nbest", "3", "--input", str(run_dir / "spm.vocab")]
        )
        == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("aiayn: error: ") for line in err)


def test_translate_command_reads_stdin_as_utf8(run_dir, translator, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(LINES[:2]).encode())))
    assert main(["translate", "--model", str(run_dir), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "".join(t[0].text + "\n" for t in translator.translate(LINES[:2]))
    for stream in ([], ["--stream"]):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"el mar\nla \xff luz\n")))
        assert main(["translate", "--model", str(run_dir), "--device", "cpu", *stream]) == 2
        assert "aiayn: error: stdin:2: invalid UTF-8" in capsys.readouterr().err


def test_arriving_chunks():
    def typed():
        yield from ("a", "b")
        time.sleep(0.3)
        yield "c"

    chunks = list(arriving_chunks(typed()))
    assert sum(chunks, []) == ["a", "b", "c"] and chunks[-1] == ["c"]
    chunks = list(arriving_chunks(iter("abcdefgh"), size=3))
    assert sum(chunks, []) == list("abcdefgh") and max(map(len, chunks)) <= 3

    def failing():
        yield "a"
        raise AiaynError("stdin:2: invalid UTF-8")

    got = []
    with pytest.raises(AiaynError, match="stdin:2"):
        for chunk in arriving_chunks(failing()):
            got += chunk
    assert got == ["a"]


def test_stream_answers_each_line_before_input_ends(run_dir, translator):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiayn", "translate", "--model", str(run_dir), "--stream", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in LINES[:3]:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            # the answer arrives while stdin is still open
            assert proc.stdout.readline() == translator.translate([line])[0][0].text + "\n"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


class Typist:
    """stdin of ``lines`` lines that fails the test when a line past ``wait`` is asked for before
    ``done`` lines of output have been written: what a reader that waited for the end would do."""

    def __init__(self, out: io.StringIO, lines: int, wait: int, done: int):
        self.out, self.lines, self.wait, self.done, self.n = out, lines, wait, done, 0

    def readline(self, size: int = -1) -> bytes:
        self.n += 1
        if self.n > self.lines:
            return b""
        if self.n > self.wait:
            assert self.out.getvalue().count("\n") >= self.done, f"line {self.n} read before any translation"
        return (LINES[self.n % len(LINES)] + "\n").encode()

    def __iter__(self):
        return iter(lambda: self.readline(), b"")


def test_translate_command_translates_stdin_a_chunk_at_a_time(run_dir, translator, monkeypatch):
    """Lines 1-4 are translated and written before line 6 is read (chunks of 2 lines here)."""
    monkeypatch.setattr("aiayn.data.text.CHUNK_LINES", 2)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(
        sys, "stdin", type("Stdin", (), {"buffer": Typist(out, 7, 5, 4), "isatty": lambda self: False})()
    )
    assert main(["translate", "--model", str(run_dir), "--device", "cpu", "--beam", "1"]) == 0
    expected = [LINES[n % len(LINES)] for n in range(1, 8)]
    assert out.getvalue() == "".join(t[0].text + "\n" for t in translator.translate(expected, beam_size=1))


def test_translate_command_refuses_a_line_past_the_limit_with_its_number(run_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"el mar\nla luz\n" + b"a " * (MAX_LINE_BYTES // 2) + b"b\nel dia\n")
    assert main(["translate", "--model", str(run_dir), "--input", str(src), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"aiayn: error: {src}:3: a line of more than 100,000 bytes; put one sentence on each line\n"
    src.write_bytes(b"el mar\n" + b"a " * (MAX_LINE_BYTES // 2 - 1) + b"b\n")  # exactly the limit: fine
    assert main(["translate", "--model", str(run_dir), "--input", str(src), "--device", "cpu", "--beam", "1"]) == 0


def test_translate_command_ends_quickly_on_dev_zero_in_bounded_memory(run_dir):
    """/dev/zero is one endless line: refused at once, within 2 GiB of address space beyond what
    importing torch takes, where reading the whole input first would grow without limit."""

    def bounded():
        limit = 2 * 1024**3 + int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "aiayn", "translate", "--model", str(run_dir), "--input", "/dev/zero"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=bounded,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr == "aiayn: error: /dev/zero:1: a line of more than 100,000 bytes; put one sentence on each line\n"
    )

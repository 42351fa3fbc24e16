"""The benchmarks: quick runs emit well-formed JSON lines, the bench's Trainer is built like the real
one, the nn.Transformer reference has aiayn's shape, and the FLOP formula agrees with PyTorch's FLOP
counter. That the peers compute aiayn's own function is tested with the exporter (test_export.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is a top-level folder of the repository, not part of the package

from aiayn.batching import collate  # noqa: E402
from aiayn.config import load_config  # noqa: E402
from aiayn.model import Transformer, count_parameters  # noqa: E402
from bench.train import NNTransformerReference, fixed_batch, training_flops  # noqa: E402

KEYS = {"bench", "impl", "preset", "batch", "threads", "device", "torch", "cpu", "median", "min", "max", "reps", "unit"}
MISSING = "is not installed (the test and bench extras install it)"
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason=f"transformers {MISSING}"
)
needs_ct2 = pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("transformers") is None,
    reason=f"ctranslate2 or transformers {MISSING}",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def run_quick(module: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and all(KEYS <= set(r) or r["bench"].endswith("-profile") for r in lines)
    assert "aiayn speedup" in done.stderr  # the summary table
    return lines


def test_train_quick_emits_json_lines():
    lines = run_quick("bench.train")
    train = [r for r in lines if r["bench"] == "train"]
    assert {r["impl"] for r in train} == {"aiayn", "torch.nn.Transformer"}
    assert {r["batch"] for r in train} == {"bucketed", "fixed 16x32"}
    assert all(r["threads"] == 1 and r["reps"] >= 5 and 0 < r["min"] <= r["median"] <= r["max"] for r in train)
    assert all(r["mfu"] > 0 and r["peak_mem_mb"] > 0 and "aiayn_speedup" in r for r in train)
    assert {r["precision"] for r in lines if r["bench"] == "matmul-peak"} == {"fp32", "bf16"}


@needs_ct2
def test_decode_quick_emits_json_lines_with_equal_forced_lengths():
    lines = run_quick("bench.decode")
    decode = [r for r in lines if r["bench"] == "decode"]
    assert {r["impl"] for r in decode} == {
        "aiayn",
        "aiayn int8",
        "aiayn, stop=finished",
        "aiayn int8, stop=finished",
        "transformers Marian",
        "ctranslate2 fp32",
        "ctranslate2 int8",
    }
    assert all(r["aiayn_int8_speedup"] > 0 for r in decode if r["impl"].startswith("ctranslate2"))
    beam = [r for r in decode if r["impl"].startswith("ctranslate2") and r["search"] == "beam 4"]
    assert beam and all(r["aiayn_finished_speedup"] > 0 and r["aiayn_int8_finished_speedup"] > 0 for r in beam)
    assert not any(r["impl"].endswith("stop=finished") for r in decode if r["search"] == "greedy")
    assert {(r["search"], r["batch"]) for r in decode} == {("greedy", 1), ("greedy", 32), ("beam 4", 1), ("beam 4", 32)}
    # random weights: every system is forced to the same number of output tokens
    assert all(r["mean_output_len"] == r["forced_len"] == 8 for r in decode)
    assert all(r["isolated"] and r["impl_threads"] == 1 for r in decode)  # --threads 1: nothing else to try
    growth = [r for r in lines if r["bench"] == "decode-growth"]
    assert [r["output_len"] for r in growth] == [16, 64]


def test_reference_has_aiayns_shape():
    """Same parameters but for the final LayerNorms nn.Transformer adds to the encoder and decoder."""
    cfg = load_config("tiny", overrides=["vocab_size=64"])
    ours, reference = Transformer(cfg.model), NNTransformerReference(cfg.model)
    assert count_parameters(reference) == count_parameters(ours) + 2 * 2 * cfg.model.d_model


def test_training_flops_agree_with_torch_flop_counter():
    """An unpadded batch with unequal source and target lengths: PyTorch counts the forward's
    matmuls (the explicit attention path, so that attention is counted too); training is 3×."""
    cfg = load_config("tiny", overrides=["vocab_size=50", "n_decoder_layers=3", "d_ff=48"])
    model = Transformer(cfg.model)
    batch = collate(range(3), [[5, 6, 7, 8]] * 3, [[9, 10, 11, 12, 13, 14]] * 3)
    with FlopCounterMode(display=False) as counter:
        memory, _ = model.encode(batch.src, batch.src_mask, need_weights=True)
        model.decode(batch.tgt_in, memory=memory, src_mask=batch.src_mask, need_weights=True)
    assert training_flops(cfg.model, batch) == 3 * counter.get_total_flops()
    assert training_flops(cfg.model, fixed_batch(50, rows=2, length=5)) > 0


@needs_transformers
def test_quality_harness_runs_both_systems_end_to_end(tmp_path):
    """bench.quality on a toy folder, three updates each: both systems train, decode the test split
    with beam 4 and report the same fields; the peer's batches stay within its token budget."""
    from toydata import make_toy_data

    from bench import marian_peer

    data = make_toy_data(tmp_path / "toy", pairs=600)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.quality",
            "--data",
            str(data),
            "--minutes",
            "0",
            "--max-steps",
            "3",
            "--threads",
            "1",
            "--no-tune",
            "--work",
            str(tmp_path / "q"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines on stdout
    assert [r["system"] for r in rows] == ["aiayn-small", "hf-marian"]
    for r in rows:
        assert r["updates"] == 3 and r["beam"] == 4 and 0 <= r["bleu"] <= 100 and r["length_ratio"] > 0
        assert r["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert "length_ratio" in done.stderr and "hf-marian" in done.stderr  # the table
    import random

    pairs = [([5] * a, [6] * b) for a, b in zip(range(1, 90), range(89, 0, -1))]
    for batch in marian_peer.token_batches(pairs, random.Random(0)):
        assert len(batch) * max(len(pairs[i][0]) + len(pairs[i][1]) for i in batch) <= marian_peer.MAX_TOKENS


def test_load_bench_serves_a_short_load_without_errors():
    """bench.load against `aiayn serve` with a random tiny model: every request answered, well-formed
    ones 200, malformed ones their 4xx, no 5xx; one JSON line and the table."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load",
            "--clients",
            "3",
            "--requests",
            "4",
            "--malformed",
            "0.5",
            "--seconds",
            "120",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["requests"] == 12 and record["malformed"] >= 1 and record["well_formed"] >= 1
    assert record["errors_well_formed"] == record["errors_malformed"] == record["status_5xx"] == 0
    assert sum(record["statuses"].values()) == 12 and record["connection_failures"] == 0
    assert record["latency_p50_ms"] <= record["latency_p99_ms"]
    assert record["rss_peak_mb"] >= record["rss_end_mb"] > 0 and record["rss_peak_mb"] >= record["rss_loaded_mb"]
    assert "5xx answers" in done.stderr


def test_memory_bench_samples_a_short_training_run(tmp_path):
    """bench.memory on a toy folder, a few seconds of the tiny preset per precision: one JSON line
    each, with the updates made and RSS figures in order, and the table."""
    from toydata import make_toy_data

    data = make_toy_data(tmp_path / "toy", pairs=600)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.memory", "--data", str(data), "--preset", "tiny"),
            *("--minutes", "0.05", "--interval", "0.2", "--threads", "1", "--precisions", "fp32,bf16"),
            *("--set", "valid_bleu_sentences=0", "--work", str(tmp_path / "runs")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines on stdout
    assert [(r["bench"], r["precision"], r["chosen"]) for r in rows] == [
        ("train-memory", "fp32", "fp32"),
        ("train-memory", "bf16", "bf16"),
    ]
    for r in rows:
        assert r["updates"] > 0 and r["samples"] >= 1 and r["threads"] == 1
        assert 0 < r["rss_start_mb"] <= r["rss_peak_mb"] and r["rss_p50_mb"] <= r["rss_peak_mb"]
        assert 0 < r["rss_final_mb"] <= r["rss_peak_mb"] and r["rss_trace"][-1][1] > 0
    assert "RSS start" in done.stderr  # the table

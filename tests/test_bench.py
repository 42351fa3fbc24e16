"""The benchmarks: quick runs emit well-formed JSON lines, the bench's Trainer is built like the real
one, the nn.Transformer reference has aiayn's shape, and the FLOP formula agrees with PyTorch's FLOP
counter; a peer that cannot run is reported, not fatal; bench/gpu.sh runs its stages. That the
peers compute aiayn's own function is tested with the exporter (export/test_export.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is a top-level folder of the repository, not part of the package

from aiayn.config import load_config  # noqa: E402
from aiayn.data.batching import collate  # noqa: E402
from aiayn.models.transformer import Transformer, count_parameters  # noqa: E402
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


def _measure_with(monkeypatch, failing: str) -> list[dict]:
    """bench.decode.measure_workload with the timing child replaced: systems of kind ``failing``
    raise what CTranslate2 raises without cuBLAS 12, the others report one 8-token output each."""
    import argparse

    import torch

    import bench.decode as decode
    from bench.common import Reporter
    from bench.decode_systems import BATCH, Subject, synthetic_workload

    def measure_best(spec, subject, w, jobs, args, device):
        if spec.kind == failing:
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded\nmore detail")
        return [([8] * n, [0.01] * 5, 1) for _, _, n in jobs]

    monkeypatch.setattr(decode, "measure_best", measure_best)
    cfg = load_config("tiny")
    w = synthetic_workload(BATCH, cfg.model.vocab_size, 8, 8)
    subject = Subject(cfg, "random weights", Path("unused"), False, None, {"synthetic": w})
    report = Reporter("decode", torch.device("cpu"), 1)
    args = argparse.Namespace(quick=True, threads=1, reps=5)
    decode.measure_workload(report, subject, "synthetic", args, torch.device("cpu"))
    return report.records


def test_a_peer_that_cannot_run_gets_a_line_saying_why_and_the_rest_are_measured(monkeypatch):
    records = _measure_with(monkeypatch, "ctranslate2")
    skipped = [r for r in records if "skipped" in r]
    assert {r["impl"] for r in skipped} == {"ctranslate2 fp32", "ctranslate2 int8"}
    assert {r["skipped"] for r in skipped} == {"RuntimeError: Library libcublas.so.12 is not found or cannot be loaded"}
    measured = {r["impl"] for r in records if "median" in r}
    assert {"aiayn", "aiayn int8", "transformers Marian"} <= measured
    assert not any(r["impl"].startswith("ctranslate2") for r in records if "median" in r)


def test_an_aiayn_failure_is_never_skipped(monkeypatch):
    with pytest.raises(RuntimeError, match="libcublas"):
        _measure_with(monkeypatch, "aiayn")


def test_ctranslate2_without_its_conversion_is_a_one_line_error():
    import torch

    from aiayn.config import AiaynError
    from bench.decode_systems import Spec, Subject, build_system, synthetic_workload

    cfg = load_config("tiny")
    subject = Subject(cfg, "random weights", Path("unused"), False, None, {})
    spec = Spec("ctranslate2 fp32", "ctranslate2", "float32")
    with pytest.raises(AiaynError, match="ctranslate2 is not installed"):
        build_system(spec, subject, synthetic_workload(2, cfg.model.vocab_size, 4, 4), torch.device("cpu"))


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
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines on stdout
    rows = [r for r in lines if r["bench"] == "quality"]
    assert [r["system"] for r in rows] == ["aiayn-small", "hf-marian"]
    for r in rows:
        assert [c["step"] for c in r["curve"]] == [3]  # no validation due: the curve still ends in the final model
        assert r["curve"][-1]["nll"] == pytest.approx(r["valid_nll"], abs=1e-3)
        assert r["updates"] == 3 and r["beam"] == 4 and 0 <= r["bleu"] <= 100 and r["length_ratio"] > 0
        assert r["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
        assert r["valid_nll"] > 0 and r["seed"] == 1
    # "auto": the peer trains at the precision aiayn's probe chose, whichever it was.
    assert rows[0]["precision"] == rows[1]["precision"] in ("bf16", "fp32")
    summaries = [r for r in lines if r["bench"] == "quality-summary"]
    assert [(s["system"], s["runs"], s["updates"]) for s in summaries] == [("aiayn-small", 1, 3), ("hf-marian", 1, 3)]
    assert "length_ratio" in done.stderr and "hf-marian" in done.stderr  # the table
    assert (tmp_path / "q" / "quality.png").stat().st_size > 10_000
    import random

    pairs = [([5] * a, [6] * b) for a, b in zip(range(1, 90), range(89, 0, -1))]
    for batch in marian_peer.token_batches(pairs, random.Random(0)):
        assert len(batch) * max(len(pairs[i][0]) + len(pairs[i][1]) for i in batch) <= marian_peer.MAX_TOKENS


@needs_transformers
def test_quality_harness_equal_updates_over_seeds(tmp_path):
    """The per-update mode: both systems, the same four updates, two seeds, no decoding; each run
    carries its valid-NLL curve every two updates, aiayn's the NLL of its tail average, each system a
    summary over its seeds, and the runs with the same seed start from the same weights only within
    a system (seeds differ)."""
    from toydata import make_toy_data

    data = make_toy_data(tmp_path / "toy", pairs=400)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.quality",
            *("--data", str(data), "--minutes", "0", "--max-steps", "4", "--threads", "1"),
            *("--seeds", "2", "--nll-only", "--eval-every", "2", "--precision", "fp32", "--work", str(tmp_path / "q")),
            *("--aiayn-args", "tail_fraction=0.5"),  # tail checkpoints at updates 2, 3 and 4
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    runs = [r for r in lines if r["bench"] == "quality"]
    assert [(r["system"], r["seed"], r["precision"]) for r in runs] == [
        ("aiayn-small", 1, "fp32"),
        ("aiayn-small", 2, "fp32"),
        ("hf-marian", 1, "fp32"),
        ("hf-marian", 2, "fp32"),
    ]
    for r in runs:
        assert r["updates"] == 4 and "bleu" not in r
        assert [c["step"] for c in r["curve"]] == [2, 4]
        assert r["curve"][-1]["nll"] == pytest.approx(r["valid_nll"], abs=1e-3)  # the last point is the final model
    assert runs[0]["valid_nll"] != runs[1]["valid_nll"]  # another seed, another run
    # The tail average's NLL, against the checkpoints averaged here by hand; the same measure on
    # the last checkpoint gives what training logged for it.
    from bench.quality import weights_nll

    run = tmp_path / "q" / "aiayn-s1"
    states = [torch.load(p, weights_only=False) for p in sorted((run / "checkpoints").glob("step_*.pt"))]
    assert runs[0]["average_steps"] == [s["step"] for s in states][-5:] == [2, 3, 4]
    by_hand = {k: torch.stack([s["model"][k].double() for s in states]).mean(0).float() for k in states[-1]["model"]}
    config = states[-1]["config"]
    assert runs[0]["average_valid_nll"] == pytest.approx(weights_nll(by_hand, config, data), abs=1e-4)
    assert runs[0]["average_valid_nll"] != pytest.approx(runs[0]["valid_nll"], abs=1e-4)
    assert weights_nll(states[-1]["model"], config, data) == pytest.approx(runs[0]["valid_nll"], abs=1e-3)
    assert "average_valid_nll" not in runs[2]  # the peer delivers its last weights
    summaries = {s["system"]: s for s in lines if s["bench"] == "quality-summary"}
    aiayn = [r["valid_nll"] for r in runs[:2]]
    assert summaries["aiayn-small"]["valid_nll"] == pytest.approx(sum(aiayn) / 2, abs=1e-4)
    assert summaries["aiayn-small"]["valid_nll_range"] == [min(aiayn), max(aiayn)]
    assert (tmp_path / "q" / "quality.png").stat().st_size > 10_000
    # Runs of separate invocations, plotted and summarised together later.
    (tmp_path / "runs.jsonl").write_text(done.stdout)
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.quality",
            "--replot",
            str(tmp_path / "runs.jsonl"),
            "--work",
            str(tmp_path / "r"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    replotted = {s["system"]: s for s in map(json.loads, again.stdout.splitlines())}
    # --replot names a variant by its system and overrides
    variant = replotted["aiayn-small tail_fraction=0.5"]
    assert variant["valid_nll"] == summaries["aiayn-small"]["valid_nll"]
    assert variant["average_valid_nll"] == summaries["aiayn-small"]["average_valid_nll"]
    assert replotted["hf-marian"]["runs"] == 2 and (tmp_path / "r" / "quality.png").is_file()


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


def test_attack_bench_reports_the_client_the_attackers_and_the_server():
    """bench.attack, a few seconds of each phase with a few of each attacker: four JSON lines, every
    attacker at work; the bar itself is for `make bench-attack` (docs/performance.md)."""
    options = ["--quiet-seconds", "2", "--seconds", "3", "--idle", "5", "--stalled", "2", "--decode-seconds", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.attack", *options], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 or "missed the bar" in done.stderr, done.stderr[-2000:]
    quiet, attack, attackers, server = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["phase"] for r in (quiet, attack, attackers, server)] == ["quiet", "attack", "attackers", "server"]
    assert quiet["requests"] == 4 and attack["requests"] == 6
    assert quiet["latency_p50_ms"] <= quiet["latency_p99_ms"]
    counts = attackers["counts"]
    assert counts["idle_opened"] >= 5 and counts["stalled_requests"] == 2 and counts["malformed_requests"] >= 1
    assert counts["longest_requests"] >= 1 and counts["half_closed_requests"] >= 1
    assert server["rss_peak_mb"] >= server["rss_loaded_mb"] > 0
    assert "attacked" in done.stderr


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


def test_gpu_script_runs_its_stages_and_writes_its_files(tmp_path):
    """bench/gpu.sh on a CPU (BENCH_DEVICE=cpu, --quick): both benches run and their lines, logs and
    the versions land in OUT_DIR; on a machine without CUDA the real run stops with one line."""
    import torch
    from toydata import make_toy_data

    env = {**os.environ, "PYTHON": sys.executable}
    missing = subprocess.run(
        ["bash", "bench/gpu.sh", str(tmp_path / "gpu")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if not torch.cuda.is_available():
        assert missing.returncode != 0 and "PyTorch sees no CUDA device here" in missing.stderr
    env.update(BENCH_DEVICE="cpu", BENCH_FLAGS="--quick")
    done = subprocess.run(
        ["bash", "bench/gpu.sh", str(tmp_path / "cpu"), str(make_toy_data(tmp_path / "toy", pairs=600))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "cpu"
    assert sorted(p.name for p in out.iterdir()) == [
        "decode.jsonl",
        "decode.log",
        "env.txt",
        "train.jsonl",
        "train.log",
    ]
    assert f"torch {torch.__version__}" in (out / "env.txt").read_text()
    for name in ("train", "decode"):
        lines = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert {r["impl"] for r in lines} >= {"aiayn"} and all(r["device"] == "cpu" for r in lines)

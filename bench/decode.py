"""Decoding throughput: aiayn's Translator against Hugging Face Marian and CTranslate2, same weights.

    python -m bench.decode [--presets small] [--model runs/demo] [--reps 5] [--device cuda] [--profile]

The peers (bench/decode_systems.py builds every system) run aiayn's own network, converted by
``aiayn export``'s functions (aiayn/export/): ``marian_from_aiayn`` builds a ``MarianMTModel`` of
the same shape holding aiayn's weights (model dimensions permuted to Marian's sin-half | cos-half
sinusoids), ``ct2_from_aiayn`` writes a CTranslate2 model from them, loaded in fp32 and int8;
tests/export/test_export.py checks that both compute aiayn's function. aiayn itself runs in
float32 and, with ``--quantize int8``'s ``Translator``, with int8 linear layers.

Each system is built and timed in a fresh process of its own, as a user would run it (see
``measure_isolated`` for why sharing one process would distort the ratios), with ``--threads``
threads and with one, and is credited with the faster (``impl_threads``: ``measure_best``). A peer
that cannot run on the machine gets a line with the reason (``skipped``) instead of its timings.

Every model is measured on synthetic sources with every output forced to the same length (EOS
banned until then): random weights give degenerate lengths, and equal lengths make the figure a
time per generated token for equal work. A trained model (``--model``, default ``runs/demo`` when
it exists) also translates Bible test verses, each system choosing its own lengths; tokens/s then
counts each system's own output tokens.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from aiayn.inference.translate import Translator
from aiayn.runtime import reuse_freed_memory
from bench.common import Reporter, find_data, parser, presets, profile_top, rate_stats, repeat, run_main, setup
from bench.decode_systems import (
    BATCH,
    FINISHED,
    Spec,
    Subject,
    Workload,
    aiayn_system,
    aiayn_translator,
    build_system,
    int8,
    load_subject,
    specs,
    subset,
    synthetic_workload,
)

DEMO = "runs/demo"  # the folder `make demo` trains
SINGLE = 8  # sentences translated one at a time
GROWTH_LENGTHS = (16, 64, 256)
SEARCHES = (("greedy", 1), ("beam 4", 4))

Job = tuple[int, int, int]  # (batch size, beam, sentences)


def _measure_here(
    spec: Spec, subject: Subject, w: Workload, jobs: list[Job], reps: int, threads: int, device_type: str
) -> list[tuple[list[int], list[float]]]:
    """In the child process: build the system, then per job the output lengths (from an untimed
    warm-up run) and ``reps`` timings."""
    torch.set_num_threads(threads)
    if spec.kind == "aiayn":  # as aiayn's decoding commands do; the peers run as their own users run them
        reuse_freed_memory()
    device = torch.device(device_type)
    run = build_system(spec, subject, w, device)
    results = []
    for batch, beam, n in jobs:
        part = subset(w, n)
        lengths = run(part, batch, beam)
        results.append((lengths, repeat(functools.partial(run, part, batch, beam), reps, device, warmup=0)))
    return results


def measure_isolated(
    spec: Spec,
    subject: Subject,
    w: Workload,
    jobs: list[Job],
    threads: int,
    args: argparse.Namespace,
    device: torch.device,
) -> list[tuple[list[int], list[float]]]:
    """``_measure_here`` in a fresh process. Two OpenMP runtimes in one process slow each other
    down: CTranslate2 brings its own, and on the development machine it ran 2–8× slower once
    PyTorch had run a two-thread operator, while a live CTranslate2 translator made PyTorch's
    operators 1.2–2× slower (docs/performance.md). A user runs one of them per process."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_measure_here, spec, subject, w, jobs, args.reps, threads, device.type).result()


def measure_best(
    spec: Spec, subject: Subject, w: Workload, jobs: list[Job], args: argparse.Namespace, device: torch.device
) -> list[tuple[list[int], list[float], int]]:
    """Per job, the faster (median) of ``--threads`` threads and one thread, and that thread count:
    a system is credited with the setting its user would pick. On the 2-core development machine
    CTranslate2's int8 ran 2–10× faster on one thread than on two (docs/performance.md)."""
    counts = [args.threads] + ([1] if args.threads > 1 and device.type == "cpu" else [])
    runs = {t: measure_isolated(spec, subject, w, jobs, t, args, device) for t in counts}
    best = []
    for i in range(len(jobs)):
        t = min(counts, key=lambda t: statistics.median(runs[t][i][1]))
        best.append((*runs[t][i], t))
    return best


def measure_workload(
    report: Reporter, subject: Subject, data: str, args: argparse.Namespace, device: torch.device
) -> None:
    """Every system on workload ``data``, greedy and beam 4, one sentence at a time and batch 32; one
    line per system and case. The speedups are the rates of aiayn's variants (float32, int8; each
    with the default stopping rule and with CTranslate2's, ``FINISHED``) over the line's."""
    w = subject.workloads[data]
    cases = [
        (search, batch, beam, n)
        for search, beam in SEARCHES
        for batch, n in ((1, 2 if args.quick else SINGLE), (BATCH, len(w.rows)))
    ]
    results: dict[tuple[str, int, int], tuple[list[int], list[float], int]] = {}
    systems = specs(device)
    extra = {"preset": subject.cfg.preset, "model": subject.label, "data": data, "vocab": subject.cfg.model.vocab_size}
    for spec in systems:
        mine = [case for case in cases if not (case[2] == 1 and spec.label.endswith(FINISHED))]  # greedy: no rule
        try:
            found = measure_best(spec, subject, w, [(batch, beam, n) for _, batch, beam, n in mine], args, device)
        except Exception as error:  # the peer's own failure, whatever its type
            if spec.kind == "aiayn":
                raise
            skip(report, spec, error, extra)
            continue
        results.update({(spec.label, batch, beam): r for (_, batch, beam, _), r in zip(mine, found)})
    for search, batch, beam, n in cases:
        ours: dict[str, dict] = {}
        for spec in systems:
            if (spec.label, batch, beam) not in results:
                continue
            lengths, times, threads = results[(spec.label, batch, beam)]
            tokens = sum(lengths)
            stats = rate_stats(tokens, times)
            if spec.kind == "aiayn":
                ours[spec.label] = stats
            rate = stats["median"] or None  # a barely trained model may emit only empty outputs
            speedups = {
                variant.replace(FINISHED, " finished").replace(" ", "_") + "_speedup": ours[variant]["median"] / rate
                for variant in ours
                if rate and spec.kind != "aiayn"
            }
            report.emit(
                impl=spec.label,
                batch=batch,
                search=search,
                **stats,
                unit="tgt tokens/s",
                **speedups,
                ms_per_token=rate and 1e3 / rate,
                sentences=n,
                sentences_per_s=rate_stats(n, times)["median"],
                output_tokens=tokens,
                mean_output_len=tokens / n,
                forced_len=w.forced,
                isolated=True,
                impl_threads=threads,
                **extra,
            )


def skip(report: Reporter, spec: Spec, error: BaseException, extra: dict[str, Any]) -> None:
    """A peer that cannot run on this machine gets one line saying why instead of its timings, and
    the other systems are still measured: for instance CTranslate2's wheels load cuBLAS 12
    (``libcublas.so.12``) to translate on CUDA, which an image with CUDA 13 alone lacks."""
    lines = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    print(f"bench.decode: {spec.label} not measured: {reason}", file=sys.stderr)
    report.emit(impl=spec.label, skipped=reason, **extra)


def int8_quality(report: Reporter, translator: Translator, data_dir: Path, args: argparse.Namespace) -> None:
    """sacreBLEU of the trained model on the Bible test split (beam 4): float32, int8, and float32
    with CTranslate2's stopping rule (``stop=finished``)."""
    from aiayn.data.corpus import read_split
    from aiayn.evaluation.evaluate import evaluate

    sources, references = read_split(data_dir, "test")
    if args.quick:
        sources, references = sources[:BATCH], references[:BATCH]
    runs = (("fp32", translator, None), ("int8", int8(translator), None), ("finished", translator, "finished"))
    scores = {
        label: evaluate(t, sources, references, progress=False, beam_size=4, stop=stop)[1] for label, t, stop in runs
    }
    report.emit(
        bench="decode-quality",
        impl="aiayn",
        data="bible test",
        sentences=len(sources),
        search="beam 4",
        bleu_fp32=scores["fp32"]["bleu"],
        bleu_int8=scores["int8"]["bleu"],
        bleu_change=scores["int8"]["bleu"] - scores["fp32"]["bleu"],
        chrf_fp32=scores["fp32"]["chrf"],
        chrf_int8=scores["int8"]["chrf"],
        bleu_stop_finished=scores["finished"]["bleu"],
        chrf_stop_finished=scores["finished"]["chrf"],
        signature=scores["fp32"]["bleu_signature"],
    )


def growth(report: Reporter, subject: Subject, args: argparse.Namespace, device: torch.device) -> None:
    """aiayn's time per generated token as outputs grow (greedy, forced lengths, 16-token
    sources): with the KV cache a step costs about the same at position 16 and 256."""
    lengths = (16, 64) if args.quick else GROWTH_LENGTHS
    for batch, n in ((1, 2), (BATCH, BATCH))[: 1 if args.quick else 2]:
        first = None
        for out_len in lengths:
            w = synthetic_workload(n, subject.cfg.model.vocab_size, 16, out_len, seed=1)
            run = aiayn_system(aiayn_translator(subject, w, device), None)
            stats = rate_stats(n * out_len, repeat(functools.partial(run, w, batch, 1), args.reps, device))
            first = first or stats["median"]
            report.emit(
                bench="decode-growth",
                impl="aiayn",
                preset=subject.cfg.preset,
                batch=batch,
                search="greedy",
                **stats,
                unit="tgt tokens/s",
                ms_per_token=1e3 / stats["median"],
                output_len=out_len,
                time_per_token_vs_16=first / stats["median"],
                model=subject.label,
            )


def main(argv: list[str] | None = None) -> None:
    p = parser("Decoding throughput: aiayn vs Hugging Face Marian and CTranslate2.", "small")
    p.add_argument(
        "--model", help=f"a trained run folder or checkpoint (default {DEMO} when it exists; --presets is then ignored)"
    )
    args = p.parse_args(argv)
    device = setup(args)
    reuse_freed_memory()  # this process decodes with aiayn only (growth, int8 quality, profile)
    report = Reporter("decode", device, args.threads)
    model_path = args.model or (DEMO if Path(DEMO).is_dir() and not args.quick else None)
    data_dir = find_data(args.data)
    for name in ["trained"] if model_path else presets(args):
        with tempfile.TemporaryDirectory() as tmp:
            subject = load_subject(name, model_path, data_dir, args, Path(tmp))
            for data in subject.workloads:
                measure_workload(report, subject, data, args, device)
            bible = subject.workloads.get("bible test, own lengths")
            if bible is not None and device.type == "cpu":
                int8_quality(report, aiayn_translator(subject, bible, device), data_dir, args)
            growth(report, subject, args, device)
            if args.profile:
                workload = bible or next(iter(subject.workloads.values()))
                run = aiayn_system(aiayn_translator(subject, workload, device), None)
                top = profile_top(
                    functools.partial(run, workload, BATCH, 4),
                    device,
                    f"aiayn beam 4, batch {BATCH}, {subject.cfg.preset}",
                )
                report.emit(
                    bench="decode-profile",
                    impl="aiayn",
                    preset=subject.cfg.preset,
                    batch=BATCH,
                    search="beam 4",
                    top_ops=top,
                    model=subject.label,
                )
    report.summary(
        extra=(
            "search",
            "data",
            "impl_threads",
            "aiayn_int8_speedup",
            "aiayn_finished_speedup",
            "ms_per_token",
            "mean_output_len",
        )
    )


if __name__ == "__main__":
    run_main(main)

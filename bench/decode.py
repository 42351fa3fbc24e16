"""Decoding throughput: aiayn's Translator against Hugging Face Marian and CTranslate2, same weights.

    python -m bench.decode [--presets small] [--model runs/demo] [--reps 5] [--device cuda] [--profile]

The peers run aiayn's own network, converted by ``aiayn export``'s functions (aiayn/export/):
``marian_from_aiayn`` builds a ``MarianMTModel`` of the same shape holding aiayn's weights (model
dimensions permuted to Marian's sin-half | cos-half sinusoids), ``ct2_from_aiayn`` writes a
CTranslate2 model from them, loaded in fp32 and int8; tests/export/test_export.py checks that both
compute aiayn's function. aiayn itself runs in float32 and, with ``--quantize int8``'s
``Translator``, with int8 linear layers.

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
import copy
import functools
import importlib.util
import multiprocessing
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError, Config
from aiayn.data.batching import pad_rows, source_row
from aiayn.export.common import token_strings
from aiayn.export.ct2 import ct2_from_aiayn
from aiayn.export.huggingface import marian_from_aiayn
from aiayn.inference.translate import BANNED, Translator
from aiayn.models.transformer import Transformer
from aiayn.runtime import reuse_freed_memory
from aiayn.training.checkpoint import load_for_inference
from bench.common import (
    Reporter,
    find_data,
    parser,
    preset_config,
    presets,
    profile_top,
    rate_stats,
    repeat,
    run_main,
    setup,
)

DEMO = "runs/demo"  # the folder `make demo` trains
BATCH, SINGLE = 32, 8  # sentences in the batched run; sentences translated one at a time
FORCED_LEN = 32  # source and output length of the forced-length workload
GROWTH_LENGTHS = (16, 64, 256)
SEARCHES = (("greedy", 1), ("beam 4", 4))
FINISHED = ", stop=finished"  # aiayn with CTranslate2's stopping rule: the same work as that peer


# ---------------------------------------------------------------------------- workloads and systems


class IdTokenizer:
    """Text spelled as ids ("t17 t5 …"), so that Translator runs on synthetic sources."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode_batch(self, lines: list[str]) -> list[list[int]]:
        return [[int(word[1:]) for word in line.split()] for line in lines]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)


@dataclass
class Workload:
    """What every system translates: ``lines`` for aiayn's Translator (text in, text out) and the
    same sources as ids with EOS (``rows``) for the peers, which take ids or token strings."""

    lines: list[str]
    rows: list[list[int]]
    forced: int | None  # every output exactly this many tokens (random weights), or None


def synthetic_workload(n: int, vocab: int, src_len: int, out_len: int, seed: int = 0) -> Workload:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, src_len - 1), generator=g).tolist()
    return Workload([IdTokenizer(vocab).decode(x) for x in ids], [source_row(x) for x in ids], out_len)


def forced_translator(model: Transformer, cfg: Config, src_len: int, out_len: int, device: torch.device) -> Translator:
    """A Translator whose every output has exactly ``out_len`` tokens for ``src_len``-token sources:
    EOS is banned for ``out_len`` tokens (decode.min_len) and the limit is src_len + offset."""
    cfg = copy.deepcopy(cfg)
    cfg.decode.min_len, cfg.decode.max_len_offset = out_len, out_len - src_len
    return Translator(model, IdTokenizer(cfg.model.vocab_size), cfg, device)


def _output_length(ids: list[int]) -> int:
    """Tokens of an output, BOS/EOS/PAD left out: what every system is credited with."""
    n = 0
    for i in ids:
        if i in (EOS_ID, PAD_ID):
            break
        n += i != BOS_ID
    return n


System = Callable[[Workload, int, int], list[int]]  # (workload, batch size, beam) -> output lengths


def aiayn_system(translator: Translator, autocast: torch.dtype | None, stop: str | None = None) -> System:
    def run(w: Workload, batch: int, beam: int) -> list[int]:
        out = []
        for start in range(0, len(w.lines), batch):
            with torch.autocast(translator.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                lines = w.lines[start : start + batch]
                found = translator.translate(lines, beam_size=beam, stop=stop, batch_tokens=10**9)
            out += [len(t[0].tokens) for t in found]
        return out

    return run


def hf_system(marian: Any, cfg: Config, device: torch.device, autocast: torch.dtype | None) -> System:
    def run(w: Workload, batch: int, beam: int) -> list[int]:
        out = []
        for start in range(0, len(w.rows), batch):
            rows = w.rows[start : start + batch]
            src, mask = pad_rows(rows)
            src, mask = src.to(device), mask.long().to(device)  # Hugging Face's masks are 0/1 integers
            if w.forced:
                lengths = dict(min_new_tokens=w.forced, max_new_tokens=w.forced)
            else:
                lengths = dict(
                    max_new_tokens=max(map(len, rows)) + cfg.decode.max_len_offset, length_penalty=cfg.decode.alpha
                )
            with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                ids = marian.generate(
                    input_ids=src,
                    attention_mask=mask,
                    num_beams=beam,
                    do_sample=False,
                    suppress_tokens=list(BANNED),
                    **lengths,
                )
            out += [_output_length(r) for r in ids.tolist()]
        return out

    return run


def ct2_system(translator: Any, cfg: Config) -> System:
    tokens = token_strings(cfg.model.vocab_size)
    banned = [[tokens[i]] for i in BANNED]

    def run(w: Workload, batch: int, beam: int) -> list[int]:
        out = []
        for start in range(0, len(w.rows), batch):
            rows = w.rows[start : start + batch]
            if w.forced:
                lengths = dict(min_decoding_length=w.forced, max_decoding_length=w.forced)
            else:
                lengths = dict(
                    max_decoding_length=max(map(len, rows)) + cfg.decode.max_len_offset,
                    min_decoding_length=cfg.decode.min_len,
                    length_penalty=cfg.decode.alpha,
                )
            # r[:-1]: the exported model appends the source's EOS itself (add_source_eos)
            found = translator.translate_batch(
                [[tokens[i] for i in r[:-1]] for r in rows],
                beam_size=beam,
                max_batch_size=batch,
                suppress_sequences=banned,
                **lengths,
            )
            out += [sum(t != tokens[EOS_ID] for t in r.hypotheses[0]) for r in found]
        return out

    return run


@dataclass
class Subject:
    """The model under test, where a process finds it, and its workloads. Picklable: every system
    is built and timed in a fresh process of its own (``measure_isolated``)."""

    cfg: Config
    label: str
    source: Path  # a trained run folder or checkpoint, or the saved random weights of preset ``cfg``
    trained: bool
    ct2_dir: Path | None  # the same weights converted for CTranslate2; None where it is not installed
    workloads: dict[str, Workload]


@dataclass(frozen=True)
class Spec:
    """One system to measure, as the process that times it builds it."""

    label: str
    kind: str  # "aiayn", "marian" or "ctranslate2"
    option: str | None = None  # aiayn: "int8"; marian: "bf16" (autocast); ctranslate2: the compute type
    stop: str | None = None  # aiayn's stopping rule (None: the model's own)


def load_subject(
    name: str, model_path: str | None, data_dir: Path | None, args: argparse.Namespace, work_dir: Path
) -> Subject:
    """The trained model at ``model_path``, or a random one of preset ``name`` (saved under
    ``work_dir``). Every model gets the forced-length workload (time per token at equal lengths,
    whatever the weights); a trained one also translates Bible test verses at the lengths each
    system chooses. The CTranslate2 conversion is written under ``work_dir``."""
    if model_path is None:
        cfg = preset_config(name)
        torch.manual_seed(0)
        model, label, source = Transformer(cfg.model).eval(), "random weights", work_dir / "weights.pt"
        torch.save(model.state_dict(), source)
    else:
        loaded = load_for_inference(model_path, "cpu")
        model, cfg, label, source = loaded.model, loaded.config, f"trained ({model_path})", Path(model_path)
    length = 8 if args.quick else FORCED_LEN
    workloads = {f"synthetic, forced length {length}": synthetic_workload(BATCH, cfg.model.vocab_size, length, length)}
    if model_path is not None:
        if data_dir is None:
            raise AiaynError(f"--model {model_path}: no Bible test sentences; pass --data DIR (from `aiayn prepare`)")
        from aiayn.data.corpus import read_split

        lines = [line for line in read_split(data_dir, "test")[0] if line.strip()][:BATCH]
        rows = [source_row(x, cfg.model.max_len) for x in loaded.tokenizer.encode_batch(lines)]
        workloads["bible test, own lengths"] = Workload(lines, rows, None)
    # Not installed (e.g. on a GPU image): CTranslate2's lines say so (measure_workload).
    ct2_dir = ct2_from_aiayn(model, work_dir / "ct2") if importlib.util.find_spec("ctranslate2") else None
    return Subject(cfg, label, source, model_path is not None, ct2_dir, workloads)


def aiayn_translator(subject: Subject, w: Workload, device: torch.device) -> Translator:
    """aiayn's Translator for workload ``w``: the trained model with its own decoding settings, or the
    random one with every output forced to ``w.forced`` tokens."""
    if subject.trained and not w.forced:
        return Translator.load(subject.source, device)
    if subject.trained:
        model = load_for_inference(subject.source, device).model
    else:
        model = Transformer(subject.cfg.model)
        model.load_state_dict(torch.load(subject.source, weights_only=True))
    return forced_translator(model.to(device).eval(), subject.cfg, len(w.rows[0]), w.forced, device)


def build_system(spec: Spec, subject: Subject, w: Workload, device: torch.device) -> System:
    """``spec``'s system for workload ``w``, built in the process that will time it."""
    if spec.kind == "ctranslate2":
        if subject.ct2_dir is None:
            raise AiaynError("ctranslate2 is not installed (pip install 'aiayn[bench]')")
        import ctranslate2

        translator = ctranslate2.Translator(
            str(subject.ct2_dir),
            device=device.type,
            compute_type=spec.option,
            intra_threads=torch.get_num_threads(),
            inter_threads=1,
        )
        return ct2_system(translator, subject.cfg)
    translator = aiayn_translator(subject, w, device)
    if spec.kind == "marian":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        autocast = torch.bfloat16 if spec.option == "bf16" else None
        return hf_system(marian_from_aiayn(translator.model).to(device), subject.cfg, device, autocast)
    if spec.option == "int8":
        translator = int8(translator)
    return aiayn_system(translator, torch.bfloat16 if spec.option == "bf16" else None, spec.stop)


def specs(device: torch.device) -> list[Spec]:
    """aiayn's variants first (the speedups of later lines refer to them), then the peers:
    Hugging Face Marian and CTranslate2 (fp32, int8; on CUDA also bf16)."""
    found = [Spec("aiayn", "aiayn")]
    if device.type == "cuda":
        found.append(Spec("aiayn bf16", "aiayn", "bf16"))  # under autocast
    else:
        found.append(Spec("aiayn int8", "aiayn", "int8"))
    found.append(Spec("aiayn" + FINISHED, "aiayn", stop="finished"))
    if device.type == "cpu":
        found.append(Spec("aiayn int8" + FINISHED, "aiayn", "int8", stop="finished"))
    found.append(Spec("transformers Marian", "marian"))
    compute_types = {"fp32": "float32", "int8": "int8"}
    if device.type == "cuda":  # where bf16 is native; Marian under autocast
        found.append(Spec("transformers Marian bf16", "marian", "bf16"))
        compute_types = {"fp32": "float32", "int8": "int8_float32", "bf16": "bfloat16"}
    found += [
        Spec(f"ctranslate2 {label}", "ctranslate2", compute_type) for label, compute_type in compute_types.items()
    ]
    return found


def subset(w: Workload, n: int) -> Workload:
    return Workload(w.lines[:n], w.rows[:n], w.forced)


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


def int8(translator: Translator) -> Translator:
    """The same model, tokenizer and settings with int8 linear layers (``--quantize int8``)."""
    return Translator(translator.model, translator.tokenizer, translator.config, translator.device, quantize="int8")


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

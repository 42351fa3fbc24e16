"""Table 1 measured: complexity per layer, sequential operations and maximum path length (§4).

Table 1 of the paper compares layers that map n vectors of width d to n others:

| layer | complexity per layer | sequential operations | maximum path length |
|---|---|---|---|
| self-attention | O(n²·d) | O(1) | O(1) |
| recurrent | O(n·d²) | O(n) | O(n) |
| convolutional, kernel k | O(k·n·d²) | O(1) | O(log_k(n)) dilated, O(n/k) contiguous |

This module measures one layer of each kind on this machine, at one d_model and log-spaced n:

- **time**: forward and backward of the layer on a (batch, n, d) input, the median of ``repeats``
  runs after ``warmup`` runs, and its log-log slope against n (least squares), beside the
  exponent of n in the paper's column;
- **peak memory**: the most tensor bytes held at once during the same forward and backward, above
  what existed before it (input and weights). It is read from ``torch.profiler``'s allocation
  records (``profile_memory=True``: every allocation and free of PyTorch's CPU allocator, time
  stamped), summed in time order. Python's ``tracemalloc`` never sees tensor storage and the
  process's RSS follows glibc's caching rather than the tensors, so neither would measure it;
- **path length**: stacks of each kind of layer, and by autograd the fewest layers after which
  output position n depends on input position 1 (its gradient first nonzero).

Self-attention is measured twice: as aiayn trains it (``MultiHeadAttention`` with PyTorch's fused
kernel, which never stores the n×n weights, so its memory grows as n), and with Eq. 1 written
out (``need_weights=True``: the weights materialised, n² memory). Both do n²·d operations, the
quantity Table 1 counts. The recurrent layer is ``torch.nn.LSTM``; the convolutional one is
ConvS2S's (Gehring et al., 2017): a convolution to 2d channels and a gated linear unit, padded
on the left (causal), kernel k.

    aiayn complexity --out runs/complexity --d-model 256 --lengths 16,32,64,128,256,512,1024
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from aiayn.claims.probes import fit_slope, make_layer, measure, path_layers
from aiayn.config import AiaynError
from aiayn.runtime import machine

DEFAULT_LENGTHS = (16, 32, 64, 128, 256, 512, 1024)
PROBE_LENGTHS = (16, 64, 256)
MAX_LENGTH = 4096  # Eq. 1 unfused holds batch × heads × n² floats: 4096 is 0.5 GB a head at batch 8
TINY = 1e-9  # stands in for a zero time or byte count on log axes


@dataclass(frozen=True)
class Kind:
    """One row of Table 1: the paper's three columns and the exponent of n in the first."""

    name: str
    complexity: str
    sequential: str
    path: str
    exponent: int


KINDS = (
    Kind("self-attention", "O(n²·d)", "O(1)", "O(1)", 2),
    Kind("self-attention, Eq. 1 unfused", "O(n²·d)", "O(1)", "O(1)", 2),
    Kind("recurrent (LSTM)", "O(n·d²)", "O(n)", "O(n)", 1),
    Kind("convolutional (GLU)", "O(k·n·d²)", "O(1)", "O(n/k) contiguous", 1),
)
# The path-length probe's stacks: a dilated convolution is the paper's O(log_k(n)) case.
PROBES = ("self-attention", "recurrent (LSTM)", "convolutional (GLU)", "convolutional, dilated")


# ------------------------------------------------------------------ the command


def parse_lengths(text: str, *, option: str = "--lengths", fewest: int = 2) -> tuple[int, ...]:
    """``16,64,32`` -> (16, 32, 64): at least ``fewest`` distinct lengths from 2 to MAX_LENGTH
    (two for a slope); ``option`` names the flag in the error."""
    try:
        lengths = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise AiaynError(f"{option} '{text}' must be integers separated by commas, e.g. 16,64,256") from None
    if len(lengths) < fewest or (lengths and (lengths[0] < 2 or lengths[-1] > MAX_LENGTH)):
        raise AiaynError(f"{option} '{text}' needs at least {fewest} distinct lengths from 2 to {MAX_LENGTH}")
    return lengths


def _slopes(points: list[dict], key: str, d_model: int) -> dict:
    ns, ys = [p["n"] for p in points], [max(p[key], TINY) for p in points]
    long = [(n, y) for n, y in zip(ns, ys) if n >= d_model]
    return {"all": fit_slope(ns, ys), "n_ge_d": fit_slope(*zip(*long)) if len(long) >= 2 else None}


def _measure_all(
    out: Path, lengths: Sequence[int], *, d_model: int, batch: int, warmup: int, repeats: int, heads: int, kernel: int
) -> dict[str, list[dict]]:
    """Every kind at every length, each point also a line of ``out/measurements.jsonl``."""
    points: dict[str, list[dict]] = {k.name: [] for k in KINDS}
    bar = tqdm([(k, n) for k in KINDS for n in lengths], desc="complexity", unit="layer", file=sys.stderr)
    with (out / "measurements.jsonl").open("w", encoding="utf-8") as lines:
        for kind, n in bar:
            bar.set_postfix(layer=kind.name, n=n)
            layer = make_layer(kind.name, d_model, heads=heads, kernel=kernel)
            found = measure(layer, n, batch=batch, d_model=d_model, warmup=warmup, repeats=repeats)
            point = {"layer": kind.name, "n": n, "d_model": d_model, "batch": batch, **found}
            points[kind.name].append(point)
            lines.write(json.dumps(point) + "\n")
    return points


def run_complexity(
    out: Path,
    *,
    d_model: int = 256,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    batch: int = 8,
    repeats: int = 5,
    warmup: int = 2,
    heads: int = 4,
    kernel: int = 3,
    probe_lengths: Sequence[int] = PROBE_LENGTHS,
) -> dict:
    """Measure every kind at every length and probe the path lengths; write
    ``measurements.jsonl`` (one line per layer and n), ``table1.json``, ``table1.md`` and
    ``complexity.png`` into ``out``; return the summary."""
    if d_model % heads or d_model < 1:
        raise AiaynError(f"--d-model {d_model} must be a positive multiple of --heads ({heads})")
    if kernel < 2 or batch < 1 or repeats < 1 or warmup < 0:
        raise AiaynError("--kernel must be at least 2, --batch and --repeats at least 1, --warmup at least 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        points = _measure_all(
            out, lengths, d_model=d_model, batch=batch, warmup=warmup, repeats=repeats, heads=heads, kernel=kernel
        )
        paths = {}
        for kind in tqdm(PROBES, desc="path length", unit="kind", file=sys.stderr):
            paths[kind] = {n: path_layers(kind, n, kernel=kernel) for n in probe_lengths}
    finally:
        torch.set_num_threads(threads)
    summary = {
        "machine": machine(),
        "d_model": d_model,
        "batch": batch,
        "heads": heads,
        "kernel": kernel,
        "repeats": repeats,
        "warmup": warmup,
        "lengths": list(lengths),
        "rows": [
            {
                **asdict(k),
                "time_slope": _slopes(points[k.name], "seconds", d_model),
                "memory_slope": _slopes(points[k.name], "peak_bytes", d_model),
            }
            for k in KINDS
        ],
        "path_layers": paths,
    }
    (out / "table1.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    text = table1_markdown(summary, points)
    (out / "table1.md").write_text(text, encoding="utf-8")
    plot(points, d_model).savefig(out / "complexity.png", dpi=120)
    print(text)
    return summary


def _slope_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table1_markdown(summary: dict, points: dict[str, list[dict]]) -> str:
    """Table 1's columns beside the measured slopes, the raw measurements, and the path lengths."""
    d, m = summary["d_model"], summary["machine"]
    lines = [
        f"Measured on {m['cpu']} ({m['cores']} cores), one thread, torch {m['torch']}: d_model {d}, batch "
        f"{summary['batch']}, {summary['heads']} heads, kernel k = {summary['kernel']}; forward + backward, "
        f"the median CPU time of {summary['repeats']} runs after {summary['warmup']}.",
        "",
        "| layer | complexity per layer (paper) | exponent of n | time slope, all n | time slope, n ≥ d "
        "| memory slope, all n | memory slope, n ≥ d | sequential operations (paper) | maximum path length (paper) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        t, mem = r["time_slope"], r["memory_slope"]
        lines.append(
            f"| {r['name']} | {r['complexity']} | {r['exponent']} | {_slope_cell(t['all'])} | "
            f"{_slope_cell(t['n_ge_d'])} | {_slope_cell(mem['all'])} | {_slope_cell(mem['n_ge_d'])} | "
            f"{r['sequential']} | {r['path']} |"
        )
    lengths = summary["lengths"]
    lines += ["", "CPU time (ms) / peak memory (MB) of one layer:", ""]
    lines += ["| layer | " + " | ".join(f"n = {n}" for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for name, row in points.items():
        cells = [f"{p['seconds'] * 1e3:.2f} / {p['peak_bytes'] / 1e6:.2f}" for p in row]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    probe = next(iter(summary["path_layers"].values()))
    lines += [
        "",
        "Layers until output position n depends on input position 1 (autograd), and the sequential steps on that path:",
        "",
        "| layer | " + " | ".join(f"n = {n}" for n in probe) + " | paper |",
        "|---" * (len(probe) + 2) + "|",
    ]
    paper = {
        "self-attention": "O(1)",
        "recurrent (LSTM)": "O(n): 1 layer, n − 1 steps",
        "convolutional (GLU)": f"O(n/k): ⌈(n − 1)/(k − 1)⌉ = ⌈(n − 1)/{summary['kernel'] - 1}⌉",
        "convolutional, dilated": "O(log_k(n)): ⌈log_k n⌉",
    }
    for kind, found in summary["path_layers"].items():
        cells = [
            "—" if layers is None else f"{layers} layer(s), {n - 1 if 'recurrent' in kind else layers} step(s)"
            for n, layers in found.items()
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {paper[kind]} |")
    return "\n".join(lines) + "\n"


def plot(points: dict[str, list[dict]], d_model: int) -> Figure:
    """CPU time and peak memory against n, log-log, one line per layer; guides ∝ n and ∝ n²
    over n ≥ d (where Table 1's terms in n dominate), from the lowest point at the first such n."""
    fig = Figure(figsize=(11, 4.5))
    for ax, key, label in zip(fig.subplots(1, 2), ("seconds", "peak_bytes"), ("CPU seconds", "peak MB")):
        scale = 1e-6 if key == "peak_bytes" else 1.0
        for name, row in points.items():
            ax.plot([p["n"] for p in row], [max(p[key], TINY) * scale for p in row], marker="o", label=name)
        ns = [p["n"] for p in points["self-attention"]]
        i = next((j for j, n in enumerate(ns) if n >= d_model and j < len(ns) - 1), 0)
        base = min(max(row[i][key], TINY) for row in points.values()) * scale
        for power, style in ((1, ":"), (2, "--")):
            guide = [base * (n / ns[i]) ** power for n in ns[i:]]
            ax.plot(ns[i:], guide, style, color="grey", label="∝ n" + ("²" if power == 2 else ""))
        ax.axvline(d_model, color="lightgrey", linewidth=1)
        ax.set(xscale="log", yscale="log", xlabel="sequence length n (grey line: n = d)", ylabel=label)
        ax.set_title(f"one layer, d = {d_model}, forward + backward: {label}")
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig

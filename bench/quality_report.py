"""What bench.quality reports: one summary per system over its seeds, a table, and the plot of
valid NLL against updates and minutes; ``--replot`` joins the JSON lines of separate invocations."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from aiayn.config import AiaynError

# The scores summarised over seeds, and the table's columns: those with the run's settings around them.
SUMMARISED = (
    "updates",
    "train_minutes",
    "tgt_tok_per_s",
    "valid_nll",
    "ema_valid_nll",
    "average_valid_nll",
    "bleu",
    "chrf",
)
COLUMNS = ("system", "seed", "precision", *SUMMARISED, "length_ratio", "bp", "beam", "length_penalty", "alpha")


def table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)] + [["" if r.get(c) is None else str(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system over its seeds: mean, sample standard deviation, min and max of each score."""
    out: dict[str, Any] = {"system": runs[0]["system"], "seeds": [r["seed"] for r in runs], "runs": len(runs)}
    for key in SUMMARISED:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = round(statistics.fmean(values), 4)
            out[f"{key}_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
            out[f"{key}_range"] = [min(values), max(values)]
    return out


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Valid NLL against updates and against minutes: each system's mean over seeds, and a band
    from the lowest to the highest seed; dashed, the moving average of the weights where a run kept one;
    a diamond at the end, the mean NLL of the tail checkpoints' average where runs measured it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    systems = list(dict.fromkeys(r["system"] for r in runs))
    for i, system in enumerate(systems):
        color = f"C{i % 10}"
        curves = [r["curve"] for r in runs if r["system"] == system and r.get("curve")]
        if not curves:
            continue
        points = min(len(c) for c in curves)
        label = f"{system} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        for ax, x_key in zip(axes, ("step", "minutes")):
            x = [statistics.fmean(c[i][x_key] for c in curves) for i in range(points)]
            ys = [[c[i]["nll"] for c in curves] for i in range(points)]
            ax.plot(x, [statistics.fmean(y) for y in ys], color=color, lw=2, label=label)
            ax.fill_between(x, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.2, lw=0)
            if all("ema_nll" in c[i] for c in curves for i in range(points)):
                ema = [statistics.fmean(c[i]["ema_nll"] for c in curves) for i in range(points)]
                ax.plot(x, ema, color=color, lw=1.5, ls="--", label=f"{system}, moving average of the weights")
        averages = [r for r in runs if r["system"] == system and r.get("average_valid_nll") is not None]
        if averages:
            nll = statistics.fmean(r["average_valid_nll"] for r in averages)
            at = statistics.fmean(r["updates"] for r in averages)
            axes[0].plot([at], [nll], "D", color=color, label=f"{system}, average of the tail checkpoints")
    axes[0].set_xlabel("updates")
    axes[1].set_xlabel("minutes of training")
    axes[0].set_ylabel("valid NLL per target subword (float32)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


def replot(files: list[Path], work: Path) -> None:
    """Runs made by separate invocations (one system each, other overrides, other days) in one
    plot and one summary line per variant; a variant is a system with its aiayn overrides."""
    runs = []
    for f in files:
        try:
            lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as e:
            raise AiaynError(f"{f}: not a bench.quality output ({e})") from None
        for r in lines:
            if r.get("bench") == "quality":
                label = " ".join([r["system"], *r.get("overrides", [])])
                runs.append({**r, "system": label})
    if not runs:
        raise AiaynError(f'{", ".join(map(str, files))}: no runs (lines with "bench": "quality") to plot')
    for variant in dict.fromkeys(r["system"] for r in runs):
        print(json.dumps({"bench": "quality-summary", **summarize([r for r in runs if r["system"] == variant])}))
    work.mkdir(parents=True, exist_ok=True)
    first = runs[0]
    budget = f"{first['updates']} updates" if not first.get("minutes") else f"{first['minutes']:g} minutes"
    plot(
        runs,
        work / "quality.png",
        f"{Path(first['data']).name}: {budget} each, {first['cpu']}, {first['threads']} threads",
    )
    print(f"bench: plot: {work / 'quality.png'}", file=sys.stderr)

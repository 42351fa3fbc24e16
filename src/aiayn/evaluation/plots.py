"""Pictures of training: §3.5's positional encodings, the learning-rate schedule (Eq. 3), a run's
curves from its metrics.csv; and ``save_figure``, which every picture of aiayn is written with.

    save_figure(run_figure(Path("runs/demo")), Path("runs/demo"), "curves")   # curves.png, curves.svg

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg (PNG) and SVG backends
without pyplot, so nothing here touches global plotting state and a server may draw in threads.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image  # a dependency of matplotlib

from aiayn.config import AiaynError, load_config
from aiayn.models.layers import sinusoid_table
from aiayn.training.schedule import make_schedule

DPI = 120


def positions_figure(d_model: int = 512, max_len: int = 100) -> Figure:
    """§3.5's sinusoids as a heatmap, position × dimension (The Illustrated Transformer's picture)."""
    if d_model < 2 or max_len < 1:
        raise AiaynError(f"--d-model must be at least 2 and --max-len positive, got {d_model} and {max_len}")
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        sinusoid_table(max_len, d_model).numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest"
    )
    ax.set_xlabel("dimension (even: sin, odd: cos; wavelength grows with the dimension)")
    ax.set_ylabel("position in the sentence")
    fig.colorbar(image, ax=ax, label="PE(pos, dim)")
    ax.set_title(f"Sinusoidal positional encoding (§3.5): d_model = {d_model}, positions 0–{max_len - 1}")
    return fig


def schedule_figure(
    d_model: int, warmup_steps: int, scale: float = 1.0, steps: int = 100_000, name: str = "inverse_sqrt"
) -> Figure:
    """The learning rate against the step, warmup marked: Eq. 3, lrate = scale · d_model^-0.5 ·
    min(step^-0.5, step · warmup^-1.5), or a budgeted schedule (``name``) over a budget of
    ``steps`` updates, as training computes it."""
    if steps < 1:
        raise AiaynError(f"--steps must be positive, got {steps}")
    schedule = make_schedule(name, d_model, warmup_steps, scale)
    x = np.unique(np.concatenate([np.linspace(1, steps, 2000).round(), [min(warmup_steps, steps)]])).astype(int)
    # Update s reads the budget used before it, (s - 1) / steps; warmup ends with update warmup_steps.
    warmup_progress = (warmup_steps - 1) / steps
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(
        x,
        [schedule(int(s), (s - 1) / steps, warmup_progress) for s in x],
        color="tab:blue",
        lw=2,
        label="learning rate",
    )
    ax.axvline(warmup_steps, color="tab:red", ls="--", lw=1.2, label=f"warmup_steps = {warmup_steps:,}")
    if warmup_steps <= steps:
        ax.annotate(
            f"peak {schedule.peak:.2e}",
            (warmup_steps, schedule.peak),
            xytext=(10, -4),
            textcoords="offset points",
            va="top",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.legend()
    ax.grid(alpha=0.3)
    what = "Eq. 3" if name == "inverse_sqrt" else f"{name} budget of {steps:,} updates,"
    ax.set_title(f"{what} learning rate: d_model = {d_model}, warmup_steps = {warmup_steps:,}, scale = {scale:g}")
    return fig


def read_metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """metrics.csv as columns of floats (NaN where a line has no value, e.g. valid_* between evaluations)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise AiaynError(f"{path}: no metrics.csv; is {run_dir} a run folder written by `aiayn train`?")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "step" not in rows[0]:
        raise AiaynError(f"{path}: no metrics logged yet; train longer than train.log_every steps")
    columns: dict[str, list[float]] = {key: [] for key in rows[0]}
    for line, row in enumerate(rows, start=2):
        for key, value in row.items():
            try:
                columns[key].append(float(value) if value not in ("", None) else math.nan)
            except ValueError:
                raise AiaynError(
                    f"{path}:{line}: '{key}' is not a number ({value!r}); fix or delete that line"
                ) from None
    return {key: np.asarray(values) for key, values in columns.items()}


def run_figure(run_dir: Path) -> Figure:
    """Training curves as a 2×2 panel: losses, validation BLEU, learning rate, throughput."""
    m = read_metrics(run_dir)
    step = m["step"]
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    panels = [
        (
            axes[0, 0],
            [
                ("train_loss", "train (label-smoothed)"),
                ("train_nll", "train NLL"),
                ("valid_loss", "valid (label-smoothed)"),
            ],
            "loss per target token",
        ),
        (axes[0, 1], [("valid_bleu", "valid BLEU (greedy, fixed subset)")], "BLEU"),
        (axes[1, 0], [("lr", "learning rate (Eq. 3)")], "learning rate"),
        (axes[1, 1], [("tokens_per_s", "target tokens / s")], "tokens / s"),
    ]
    for ax, series, ylabel in panels:
        drawn = False
        for key, label in series:
            values = m.get(key)
            if values is None or np.isnan(values).all():
                continue
            keep = ~np.isnan(values)
            few = keep.sum() <= 40  # evaluation columns: mark the points
            ax.plot(step[keep], values[keep], marker="o" if few else None, ms=4, label=label)
            drawn = True
        if drawn:
            ax.legend(fontsize=9)
        else:
            ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1, 0].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.suptitle(f"Training run {Path(run_dir).resolve().name}: {int(step[-1]):,} steps logged", fontsize=13)
    return fig


def save_figure(fig: Figure, out: Path, stem: str) -> list[Path]:
    """``out`` ending in .png or .svg: that one file; otherwise a folder receiving stem.png and stem.svg."""
    out = Path(out)
    targets = [out] if out.suffix.lower() in (".png", ".svg") else [out / f"{stem}.png", out / f"{stem}.svg"]
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".svg":
            # No date in SVGs, so regenerated figures only change when the picture does.
            fig.savefig(path, bbox_inches="tight", pad_inches=0.15, metadata={"Date": None})
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
        # A 256-colour palette makes these flat-coloured plots about 3× smaller with no visible change;
        # maximum coverage keeps exact colours (white, the head colours) that median cut would blend.
        image = Image.open(buffer).convert("RGB")
        image.quantize(256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE).save(path, optimize=True)
    return targets


def run_plot(args: Any) -> None:
    """``aiayn plot positions | schedule | run``."""
    if args.what == "positions":
        fig, stem, out = positions_figure(args.d_model, args.max_len), "positions", args.out or "."
    elif args.what == "schedule":
        cfg = load_config(args.preset, args.config, args.overrides)
        steps = args.steps or cfg.train.max_steps
        t = cfg.train
        fig = schedule_figure(cfg.model.d_model, t.warmup_steps, t.lr_scale, steps, t.schedule)
        stem, out = "schedule", args.out or "."
    else:
        fig, stem, out = run_figure(Path(args.run_dir)), "curves", args.out or args.run_dir
    for path in save_figure(fig, Path(out), stem):
        print(path)

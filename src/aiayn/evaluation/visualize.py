"""Look inside: attention maps of a translated sentence, positional encodings, Eq. 3, training curves.

Attention is read from the weights the model itself returns (``need_weights=True``), never from
module state: the sentence is translated (beam search, §6.1), then the model runs once,
teacher-forced, on (source, BOS + translation), exactly as a training step would see the pair.

    maps = sentence_attention(Translator.load("runs/demo"), "En el principio creó Dios los cielos y la tierra.")
    fig = attention_grid(maps.encoder, maps.source, maps.source, "Encoder self-attention")
    save_figure(fig, Path("out"), "encoder")    # out/encoder.png and out/encoder.svg

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg (PNG) and SVG backends
without pyplot, so nothing here touches global plotting state and a server may draw in threads.
Layers and heads are numbered from 1 in titles and on the command line, as in the paper's figures.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image  # a dependency of matplotlib

from aiayn.config import BOS_ID, PAD_ID, AiaynError, load_config
from aiayn.data.batching import source_row
from aiayn.inference.translate import Translator
from aiayn.models.layers import sinusoid_table
from aiayn.training.schedule import make_schedule

KINDS = {
    "encoder": "Encoder self-attention",
    "decoder": "Decoder self-attention (masked)",
    "cross": "Encoder–decoder attention",
}
DPI = 120
MIN_LINE_WEIGHT = 0.01  # lines fainter than this are invisible anyway; skipping them keeps SVGs small


@dataclass
class AttentionMaps:
    """One sentence's attention, teacher-forced on its translation (float32 arrays).

    source: the S encoder inputs as subword pieces, the final ``</s>`` included
    target: the T decoder inputs, ``<s>`` + the translation's pieces (query i predicts piece i + 1)
    """

    source: list[str]
    target: list[str]
    translation: str
    encoder: np.ndarray  # (L_enc, H, S, S)
    decoder: np.ndarray  # (L_dec, H, T, T)
    cross: np.ndarray  # (L_dec, H, T, S)

    def labels(self, kind: str) -> tuple[list[str], list[str]]:
        """(query labels, key labels) of one kind of attention."""
        return {
            "encoder": (self.source, self.source),
            "decoder": (self.target, self.target),
            "cross": (self.target, self.source),
        }[kind]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])  # (B, L)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]  # (B, L) True = real
    return ids, mask


def _stack(per_layer: list[torch.Tensor], rows: int, queries: int, keys: int) -> torch.Tensor:
    """L × (B, H, ·, ·) -> (B, L, H, ·, ·); a kind of attention the network does not have (the
    baselines of models/rnn.py and conv.py have no self-attention) gives L = 0 layers of one head."""
    if not per_layer:
        return torch.zeros(rows, 0, 1, queries, keys)
    return torch.stack(per_layer, dim=1).float().cpu()  # (B, L, H, ·, ·)


def attention_weights(
    model: torch.nn.Module, src_rows: list[list[int]], tgt_rows: list[list[int]]
) -> dict[str, torch.Tensor]:
    """Teacher-forced attention of a padded batch, in eval mode.

    ``src_rows`` as ``batching.source_row`` builds them (x + EOS), ``tgt_rows`` = BOS + y.
    Returns {"encoder": (B, L, H, S, S), "decoder": (B, L, H, T, T), "cross": (B, L, H, T, S)};
    rows of padding positions are padding too and should be cropped by the caller.
    """
    device = next(model.parameters()).device
    src, src_mask = (t.to(device) for t in _pad(src_rows))
    tgt_in, _ = _pad(tgt_rows)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            memory, enc = model.encode(src, src_mask, need_weights=True)
            _, _, dec = model.decode(tgt_in.to(device), memory=memory, src_mask=src_mask, need_weights=True)
    finally:
        model.train(was_training)
    (b, s), t = src.shape, tgt_in.size(1)
    return {
        "encoder": _stack(enc, b, s, s),
        "decoder": _stack(dec["self"], b, t, t),
        "cross": _stack(dec["cross"], b, t, s),
    }


def sentence_attention(
    translator: Any, sentence: str, beam_size: int | None = None, step_hook: Callable[[], None] | None = None
) -> AttentionMaps:
    """Translate ``sentence`` with ``translator`` (a ``translate.Translator``), then read the
    attention of the model run once on (sentence, BOS + its best translation). Only the best is
    needed, so the run's ``decode.nbest`` (which may exceed ``beam_size``) is not asked for;
    ``step_hook`` as in ``Translator.translate``."""
    if not sentence.strip():
        raise AiaynError("attention: the sentence is empty; give a sentence to translate")
    tok = translator.tokenizer
    best = translator.translate([sentence], beam_size=beam_size, nbest=1, step_hook=step_hook)[0][0]
    limit = translator.config.model.max_len
    src = source_row(tok.encode(sentence), limit)
    tgt = [BOS_ID, *best.tokens][:limit]  # a hypothesis cut off at the length limit fills every position
    w = attention_weights(translator.model, [src], [tgt])
    return AttentionMaps(
        [tok.id_to_piece(i) for i in src],
        [tok.id_to_piece(i) for i in tgt],
        best.text,
        *(w[k][0].numpy() for k in ("encoder", "decoder", "cross")),
    )


# ---------------------------------------------------------------------------- attention figures


def _font_size(cell_inches: float) -> float:
    return float(np.clip(cell_inches * 72 * 0.75, 4.5, 9))


def attention_grid(weights: np.ndarray, rows: list[str], cols: list[str], title: str) -> Figure:
    """Every layer × head of one kind of attention as heatmaps: rows = layers, columns = heads.

    weights (L, H, T_q, T_k); ``rows`` label the queries (y), ``cols`` the keys (x). Subword
    labels sit on the left column and the bottom row; one colour bar serves every panel.
    """
    n_layers, n_heads, t_q, t_k = weights.shape
    cell = float(np.clip(3.2 / max(t_q, t_k), 0.09, 0.28))  # inches per token
    panel_w, panel_h = max(t_k * cell, 1.0), max(t_q * cell, 1.0)
    fig = Figure(figsize=(n_heads * panel_w + 2.2, n_layers * panel_h + 1.6), layout="constrained")
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    font = _font_size(cell)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks(range(t_k), cols if layer == n_layers - 1 else [], rotation=90, fontsize=font)
            ax.set_yticks(range(t_q), rows if head == 0 else [], fontsize=font)
            ax.tick_params(length=0)
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=10)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / (n_layers * panel_h + 1)), label="attention weight")
    fig.suptitle(
        f"{title}: layers 1–{n_layers} (rows) × heads 1–{n_heads} (columns); queries down, keys across", fontsize=12
    )
    return fig


def head_colours(n_heads: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab10" if n_heads <= 10 else "tab20"]
    return [cmap(h % cmap.N) for h in range(n_heads)]


def _draw_lines(ax, weights: np.ndarray, left: list[str], right: list[str], colours: list, font: float) -> None:
    """Two columns of tokens; a line from query i (left) to key j (right) with alpha = weight."""
    for h, colour in enumerate(colours):
        q, k = np.nonzero(weights[h] >= MIN_LINE_WEIGHT)
        segments = [((0.0, -i), (1.0, -j)) for i, j in zip(q, k)]
        rgba = [to_rgba(colour, float(min(weights[h, i, j], 1.0))) for i, j in zip(q, k)]
        ax.add_collection(LineCollection(segments, colors=rgba, linewidths=1.5))
    for i, piece in enumerate(left):
        ax.text(-0.04, -i, piece, ha="right", va="center", fontsize=font)
    for j, piece in enumerate(right):
        ax.text(1.04, -j, piece, ha="left", va="center", fontsize=font)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-max(len(left), len(right)) + 0.5, 0.5)
    ax.axis("off")


def attention_lines(weights: np.ndarray, left: list[str], right: list[str], title: str) -> Figure:
    """The paper's Figures 3–5: for one layer, query tokens on the left, key tokens on the right,
    a line from each token to each token it attends to, alpha ∝ weight, one colour per head.

    weights (H, T_q, T_k). The first panel overlays every head; one panel per head follows.
    """
    n_heads, t_q, t_k = weights.shape
    colours = head_colours(n_heads)
    height = 0.24 * max(t_q, t_k) + 1.2
    width = 1.4 + 0.15 * max(len(p) for p in left + right)  # room for the lines between two columns of labels
    fig = Figure(figsize=(width * (n_heads + 1), height), layout="constrained")
    axes = fig.subplots(1, n_heads + 1, squeeze=False)[0]
    _draw_lines(axes[0], weights, left, right, colours, 9)
    axes[0].set_title("all heads", fontsize=10)
    axes[0].legend(
        handles=[Line2D([], [], color=c, lw=3, label=f"head {h + 1}") for h, c in enumerate(colours)],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(n_heads, 4),
        fontsize=8,
        frameon=False,
    )
    for h in range(n_heads):
        _draw_lines(axes[h + 1], weights[h : h + 1], left, right, colours[h : h + 1], 9)
        axes[h + 1].set_title(f"head {h + 1}", fontsize=10, color=colours[h])
    fig.suptitle(f"{title}; left: queries, right: keys; line opacity = weight", fontsize=12)
    return fig


def check_layer(layer: int | None, n_layers: int, kind: str) -> int:
    """``layer`` (1-based; None: the last) if the model has it, else a one-line error."""
    layer = n_layers if layer is None else layer
    if not 1 <= layer <= n_layers:
        raise AiaynError(f"--layer {layer}: the model has {n_layers} {kind} layers (1–{n_layers})")
    return layer


def attention_figures(maps: AttentionMaps, layer: int | None = None, kind: str = "encoder") -> dict[str, Figure]:
    """The three grids and the Figure 3–5 view of ``kind`` at ``layer`` (1-based; default the last)."""
    if kind not in KINDS:
        raise AiaynError(f"unknown kind of attention '{kind}' (choose from {', '.join(KINDS)})")
    stack = getattr(maps, kind)
    if not stack.shape[0]:
        raise AiaynError(
            f"this model has no {kind} attention (only the Transformer has self-attention); use --kind cross"
        )
    layer = check_layer(layer, stack.shape[0], kind)
    present = [k for k in KINDS if getattr(maps, k).shape[0]]
    figures = {f"attention_{k}": attention_grid(getattr(maps, k), *maps.labels(k), KINDS[k]) for k in present}
    figures[f"attention_lines_{kind}_layer{layer}"] = attention_lines(
        stack[layer - 1], *maps.labels(kind), f"{KINDS[kind]}, layer {layer} of {stack.shape[0]}"
    )
    return figures


# ---------------------------------------------------------------------------- other plots


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


# ---------------------------------------------------------------------------- files and commands


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


def run_attention(args: Any) -> None:
    """``aiayn attention``: translate a sentence, draw its attention, print the files written."""
    translator = Translator.load(args.model, args.device)
    m = translator.config.model
    check_layer(args.layer, m.n_layers if args.kind == "encoder" else m.decoder_layers, args.kind)
    maps = sentence_attention(translator, args.sentence, args.beam)
    figures = attention_figures(maps, args.layer, args.kind)
    print(f"translation: {maps.translation}")
    for stem, fig in figures.items():
        for path in save_figure(fig, Path(args.out), stem):
            print(path)


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

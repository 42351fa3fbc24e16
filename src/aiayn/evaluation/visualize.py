"""Look inside: the attention maps of a translated sentence, as grids and as lines, per layer and head.

Attention is read from the weights the model itself returns (``need_weights=True``), never from
module state: the sentence is translated (beam search, §6.1), then the model runs once,
teacher-forced, on (source, BOS + translation), exactly as a training step would see the pair.

    maps = sentence_attention(Translator.load("runs/demo"), "En el principio creó Dios los cielos y la tierra.")
    fig = attention_grid(maps.encoder, maps.source, maps.source, "Encoder self-attention")
    save_figure(fig, Path("out"), "encoder")    # out/encoder.png and out/encoder.svg (plots.py)

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg (PNG) and SVG backends
without pyplot, so nothing here touches global plotting state and a server may draw in threads.
Layers and heads are numbered from 1 in titles and on the command line, as in the paper's figures.
"""

from __future__ import annotations

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

from aiayn.config import BOS_ID, PAD_ID, AiaynError
from aiayn.data.batching import source_row
from aiayn.evaluation.plots import save_figure
from aiayn.inference.translate import Translator

KINDS = {
    "encoder": "Encoder self-attention",
    "decoder": "Decoder self-attention (masked)",
    "cross": "Encoder–decoder attention",
}
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

"""Table 3 at the ``small`` scale: the paper's variations of its base model, each trained for the
same budget and reported as the paper reports them (§6.2, "Model Variations").

The paper varies its base model (N 6, d_model 512, d_ff 2048, h 8, d_k = d_v 64, P_drop 0.1,
ε_ls 0.1) one setting at a time and reports, per row, the parameters, the development set's
perplexity per word-piece and its BLEU (beam search, no checkpoint averaging). Here the same
rows vary the ``small`` preset (N 3, d_model 256, d_ff 1024, h 4, d_k = d_v 64, P_drop 0.1,
ε_ls 0.1), mapped so that each keeps its relation to the base:

- (A) heads, d_k = d_v = d_model / h: the paper's h of 4, 16, 32 (half, twice, four times base's
  8) become 2, 8, 16 (of small's 4), with the paper's own d_k of 128, 32, 16; its single head
  (d_k 512) stays a single head (d_k 256). h·d_k = d_model at both scales;
- (B) d_k alone 16 and 32, as the paper's (d_v stays 64 at both scales);
- (C) N 2, 4, 8 (a third, two thirds, four thirds of base's 6) become 1, 2, 4 (of 3); d_model
  half and double with d_k = d_v = d_model / h; d_ff half and double;
- (D) P_drop 0.0 / 0.2 and ε_ls 0.0 / 0.2, the paper's values;
- (E) learned positions instead of sinusoids.

Each row is its own run folder ``OUT/<row>/``, trained by ``aiayn train``'s own ``train`` for
``--minutes``. A row whose ``row.json`` exists is finished and skipped; a row with checkpoints
but no ``row.json`` resumes from its newest one. Perplexities are per subword of this data
folder's vocabulary and are not comparable with the paper's, per word-piece of its own (the paper
itself warns that its per-word-piece perplexities are not comparable with per-word ones). BLEU is
sacreBLEU on the whole valid split, beam search with the config's ``decode`` settings from the last
weights (no averaging), as the paper's Table 3. The test split is never read.

    aiayn sweep table3 --data data/bible --minutes 20 --rows A,B,C,D,E --out runs/table3
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from aiayn.config import AiaynError, from_dict
from aiayn.models.transformer import Transformer, count_parameters
from aiayn.runtime import machine
from aiayn.training import checkpoint as ckpt
from aiayn.training.train import train

GROUPS = ("A", "B", "C", "D", "E")
# The paper's base regularisation, P_drop 0.1 from the first update and ε_ls 0.1, set before the
# user's overrides and the row's change: a preset or recipe may set others (``tiny`` trains without
# dropout, ``big`` with 0.3, ``budget`` without it for the first epochs), and row D must vary the
# paper's values.
PAPER_BASE = ("model.dropout=0.1", "train.dropout_from_epoch=0", "train.label_smoothing=0.1")


@dataclass(frozen=True)
class Row:
    """One row of Table 3: the paper's change to its base and its published figures (PPL per
    word-piece, BLEU on newstest2013, parameters in millions where the paper gives them), and
    the same change to ``small`` as ``key=value`` settings."""

    name: str
    group: str
    paper: dict[str, Any] = field(default_factory=dict)
    small: dict[str, Any] = field(default_factory=dict)
    paper_ppl: float = 0.0
    paper_bleu: float = 0.0
    paper_params: float | None = None


def _same(change: dict[str, Any]) -> dict[str, Any]:
    return {"paper": change, "small": change}


ROWS = (
    Row("base", "base", paper_ppl=4.92, paper_bleu=25.8, paper_params=65),
    Row("A-h1", "A", dict(n_heads=1, d_k=512, d_v=512), dict(n_heads=1, d_k=256, d_v=256), 5.29, 24.9),
    Row("A-h2", "A", dict(n_heads=4, d_k=128, d_v=128), dict(n_heads=2, d_k=128, d_v=128), 5.00, 25.5),
    Row("A-h8", "A", dict(n_heads=16, d_k=32, d_v=32), dict(n_heads=8, d_k=32, d_v=32), 4.91, 25.8),
    Row("A-h16", "A", dict(n_heads=32, d_k=16, d_v=16), dict(n_heads=16, d_k=16, d_v=16), 5.01, 25.4),
    Row("B-dk16", "B", **_same(dict(d_k=16)), paper_ppl=5.16, paper_bleu=25.1, paper_params=58),
    Row("B-dk32", "B", **_same(dict(d_k=32)), paper_ppl=5.01, paper_bleu=25.4, paper_params=60),
    Row("C-N1", "C", dict(n_layers=2), dict(n_layers=1), 6.11, 23.7, 36),
    Row("C-N2", "C", dict(n_layers=4), dict(n_layers=2), 5.19, 25.3, 50),
    Row("C-N4", "C", dict(n_layers=8), dict(n_layers=4), 4.88, 25.5, 80),
    Row("C-d128", "C", dict(d_model=256, d_k=32, d_v=32), dict(d_model=128, d_k=32, d_v=32), 5.75, 24.5, 28),
    Row("C-d512", "C", dict(d_model=1024, d_k=128, d_v=128), dict(d_model=512, d_k=128, d_v=128), 4.66, 26.0, 168),
    Row("C-dff512", "C", dict(d_ff=1024), dict(d_ff=512), 5.12, 25.4, 53),
    Row("C-dff2048", "C", dict(d_ff=4096), dict(d_ff=2048), 4.75, 26.2, 90),
    Row("D-drop0", "D", **_same(dict(dropout=0.0)), paper_ppl=5.77, paper_bleu=24.6),
    Row("D-drop0.2", "D", **_same(dict(dropout=0.2)), paper_ppl=4.95, paper_bleu=25.5),
    Row("D-ls0", "D", **_same(dict(label_smoothing=0.0)), paper_ppl=4.67, paper_bleu=25.3),
    Row("D-ls0.2", "D", **_same(dict(label_smoothing=0.2)), paper_ppl=5.47, paper_bleu=25.7),
    Row("E-learned", "E", **_same(dict(positional="learned")), paper_ppl=4.92, paper_bleu=25.7),
)
SYMBOLS = {
    "n_heads": "h",
    "n_layers": "N",
    "dropout": "P_drop",
    "label_smoothing": "ε_ls",
    "positional": "positions",
}
NOTE = (
    "Perplexity is per subword of this data folder's vocabulary: not comparable with the paper's, "
    "which is per word-piece of its own (as the paper warns, perplexities per piece of different "
    "vocabularies do not compare). BLEU: "
    "sacreBLEU on the whole valid split, beam search with the config's decode settings, the last "
    "weights (no averaging), as the paper's Table 3; the test split is never read."
)


def describe(change: dict[str, Any]) -> str:
    """``{"n_heads": 1, "d_k": 256, "d_v": 256}`` -> ``h=1, d_k=256, d_v=256``; ``{}`` -> ``as base``."""
    return ", ".join(f"{SYMBOLS.get(k, k)}={v}" for k, v in change.items()) or "as base"


def select_rows(text: str) -> list[Row]:
    """``--rows A,C-N1``: groups (A–E) and row names, in Table 3's order; base always first."""
    wanted = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(wanted - set(GROUPS) - {r.name for r in ROWS})
    if unknown or not wanted:
        raise AiaynError(
            f"--rows: unknown row {', '.join(unknown) or '(none given)'}; give groups "
            f"{','.join(GROUPS)} or rows {','.join(r.name for r in ROWS[1:])}"
        )
    return [r for r in ROWS if r.name == "base" or r.group in wanted or r.name in wanted]


def row_overrides(row: Row) -> list[str]:
    return [f"{key}={value}" for key, value in row.small.items()]


def run_row(row: Row, data: Path, run_dir: Path, *, preset: str, overrides: list[str]) -> dict:
    """Train (or resume) one row's run and write its ``row.json``; a finished row is read back."""
    done = run_dir / "row.json"
    if done.is_file():
        print(f"aiayn: sweep: {row.name} finished before, skipped ({done})", file=sys.stderr)
        return json.loads(done.read_text(encoding="utf-8"))
    if ckpt.list_checkpoints(run_dir):
        result = train(data, run_dir, resume=True)
    else:
        result = train(data, run_dir, preset, overrides=[*overrides, *row_overrides(row)])
    _, state = ckpt.latest_good_checkpoint(run_dir)
    cfg = from_dict(json.loads(state["config"]))
    with torch.device("meta"):
        parameters = count_parameters(Transformer(cfg.model))
    found = {
        "row": row.name,
        "group": row.group,
        "paper_change": describe(row.paper),
        "small_change": describe(row.small),
        "parameters": parameters,
        "updates": int(result["step"]),
        "minutes": round(float(result["minutes"]), 2),
        "valid_ppl": result.get("valid_ppl"),
        "valid_bleu": result.get("valid_beam_bleu"),
        "beam_size": cfg.decode.beam_size,
        "paper": {"ppl": row.paper_ppl, "bleu": row.paper_bleu, "params_m": row.paper_params},
    }
    done.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    return found


def run_sweep(
    data: Path,
    out: Path,
    *,
    minutes: float,
    rows: str = ",".join(GROUPS),
    preset: str = "small",
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Every selected row for ``minutes`` each (``max_minutes``, the paper's P_drop and ε_ls, then
    ``overrides``, then the row's change); ``OUT/table3.json``, ``table3.md`` and ``table3.png``
    rewritten after each row."""
    if not minutes > 0:
        raise AiaynError(f"--minutes {minutes} must be positive: each row trains for that long")
    selected, out = select_rows(rows), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"train.max_minutes={minutes}", *PAPER_BASE, *overrides]
    report = {
        "preset": preset,
        "minutes": minutes,
        "overrides": list(overrides),
        "machine": machine(),
        "note": NOTE,
        "rows": [],
    }
    for i, row in enumerate(selected, 1):
        print(f"aiayn: sweep: row {i}/{len(selected)}: {row.name} ({describe(row.small)})", file=sys.stderr)
        report["rows"].append(run_row(row, Path(data), out / row.name, preset=preset, overrides=common))
        write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> None:
    (out / "table3.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "table3.md").write_text(table3_markdown(report), encoding="utf-8")
    plot(report["rows"]).savefig(out / "table3.png", dpi=120)


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table3_markdown(report: dict) -> str:
    """Table 3's layout: the change, then this sweep's figures beside the paper's."""
    m = report["machine"]
    lines = [
        f"Table 3 at the `{report['preset']}` scale: {report['minutes']:g} minutes per row on {m['cpu']} "
        f"({m['cores']} cores), torch {m['torch']}"
        + (f", with {' '.join(report['overrides'])}" if report["overrides"] else "")
        + ".",
        "",
        report["note"],
        "",
        "| row | change (paper) | change (here) | params | updates | valid PPL | valid BLEU "
        "| paper PPL | paper BLEU | paper params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        p = r["paper"]
        lines.append(
            f"| {r['row']} | {r['paper_change']} | {r['small_change']} | {r['parameters'] / 1e6:.2f}M | "
            f"{r['updates']:,} | {_cell(r['valid_ppl'], 2)} | {_cell(r['valid_bleu'], 1)} | {p['ppl']:.2f} | "
            f"{p['bleu']:.1f} | {_cell(p['params_m'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> Figure:
    """Valid perplexity and BLEU per row, coloured by group, base's as a dashed line."""
    fig = Figure(figsize=(11, 0.35 * len(rows) + 1.8))
    colours = {g: f"C{i}" for i, g in enumerate(("base", *GROUPS))}
    names = [r["row"] for r in rows]
    for ax, key, label in zip(fig.subplots(1, 2, sharey=True), ("valid_ppl", "valid_bleu"), ("PPL", "BLEU")):
        values = [r[key] or 0.0 for r in rows]
        bars = ax.barh(names, values, color=[colours[r["group"]] for r in rows])
        ax.bar_label(bars, fmt="%.2f" if key == "valid_ppl" else "%.1f", fontsize=8, padding=2)
        if rows[0]["row"] == "base" and rows[0][key] is not None:
            ax.axvline(rows[0][key], color="black", linestyle="--", linewidth=1)
        if key == "valid_bleu":  # at least one BLEU point wide: hundredths printed as 0.0 must not look like bars
            ax.set_xlim(0.0, max(1.0, 1.15 * max(values)))
        ax.set_title(f"valid {label}" + (" per subword" if key == "valid_ppl" else ""))
    fig.axes[0].invert_yaxis()
    fig.tight_layout()
    return fig

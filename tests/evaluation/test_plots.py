"""Pictures of training checked against hand-computed values: §3.5's sinusoids, Eq. 3 and the
budgeted schedule, a run's curves from metrics.csv with one-line errors for bad lines; PNG sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from figurekit import assert_png_matches

from aiayn.cli import main
from aiayn.evaluation import plots as v
from aiayn.training.runlog import METRICS


def test_positions_heatmap_is_the_papers_formula(tmp_path):
    fig = v.positions_figure(d_model=64, max_len=50)
    image = fig.axes[0].images[0].get_array()
    pos, dim = np.arange(50)[:, None], np.arange(64)[None, :]
    angle = pos / 10000 ** ((dim - dim % 2) / 64)
    expected = np.where(dim % 2 == 0, np.sin(angle), np.cos(angle))
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert len(fig.axes) == 2 and "d_model = 64" in fig.axes[0].get_title()
    assert_png_matches(fig, v.save_figure(fig, tmp_path, "positions")[0])


def test_schedule_follows_eq3_and_marks_the_warmup(tmp_path):
    fig = v.schedule_figure(d_model=512, warmup_steps=4000, steps=20_000)
    ax = fig.axes[0]
    curve, warmup = ax.lines
    steps, rates = curve.get_xdata(), curve.get_ydata()
    hand = [512**-0.5 * min(s**-0.5, s * 4000**-1.5) for s in steps]
    np.testing.assert_allclose(rates, hand, rtol=1e-12)
    assert steps[np.argmax(rates)] == 4000 and steps[0] == 1 and steps[-1] == 20_000
    assert list(warmup.get_xdata()) == [4000, 4000]
    assert_png_matches(fig, v.save_figure(fig, tmp_path, "schedule")[0])


def test_budgeted_schedule_figure_rises_then_falls_to_zero_by_hand():
    """`small`'s default: a linear rise over 300 updates to 0.27713 · 256^-0.5 · 300^-0.5 ≈ 1e-3,
    then a straight fall from there to zero at the budget's last update."""
    fig = v.schedule_figure(d_model=256, warmup_steps=300, scale=0.27713, steps=1500, name="linear")
    steps, rates = fig.axes[0].lines[0].get_xdata(), fig.axes[0].lines[0].get_ydata()
    peak = 0.27713 * 256**-0.5 * 300**-0.5
    assert peak == pytest.approx(1e-3, rel=1e-4)
    hand = [peak * s / 300 if s <= 300 else peak * (1 - (s - 1) / 1500) / (1 - 299 / 1500) for s in steps]
    np.testing.assert_allclose(rates, hand, rtol=1e-12)
    assert steps[np.argmax(rates)] == 300 and rates[-1] == pytest.approx(peak / 1201)
    assert "linear budget of 1,500 updates" in fig.axes[0].get_title()


def write_metrics(run: Path, rows: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [",".join(METRICS)] + [",".join(str(r.get(k, "")) for k in METRICS) for r in rows]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_run_curves_plot_every_logged_value(tmp_path):
    rows = [
        {
            "step": s,
            "epoch": 0,
            "train_loss": 5 - s / 100,
            "train_nll": 4.5 - s / 100,
            "lr": s * 1e-5,
            "tokens_per_s": 1000 + s,
        }
        for s in range(10, 110, 10)
    ]
    rows += [
        {"step": 50, "valid_loss": 4.2, "valid_ppl": 60, "valid_bleu": 1.5},
        {"step": 100, "valid_loss": 3.9, "valid_ppl": 40, "valid_bleu": 3.25},
    ]
    write_metrics(tmp_path / "run", rows)
    fig = v.run_figure(tmp_path / "run")
    assert len(fig.axes) == 4
    loss, bleu, lr, speed = fig.axes
    assert [line.get_label() for line in loss.lines] == [
        "train (label-smoothed)",
        "train NLL",
        "valid (label-smoothed)",
    ]
    np.testing.assert_allclose(loss.lines[0].get_ydata(), [5 - s / 100 for s in range(10, 110, 10)])
    assert list(bleu.lines[0].get_xdata()) == [50, 100] and list(bleu.lines[0].get_ydata()) == [1.5, 3.25]
    np.testing.assert_allclose(lr.lines[0].get_ydata(), [s * 1e-5 for s in range(10, 110, 10)])
    assert speed.lines[0].get_ydata()[-1] == 1100
    assert_png_matches(fig, v.save_figure(fig, tmp_path, "curves")[0])


def test_run_curves_name_the_bad_file_and_line(tmp_path):
    with pytest.raises(Exception, match="no metrics.csv"):
        v.run_figure(tmp_path)
    write_metrics(tmp_path, [{"step": 10, "train_loss": 1.0}, {"step": 20, "train_loss": "oops"}])
    with pytest.raises(Exception, match=r"metrics.csv:3: 'train_loss' is not a number"):
        v.run_figure(tmp_path)


def test_plot_commands_write_files_and_report_errors_in_one_line(tmp_path, capsys):
    assert main(["plot", "positions", "--d-model", "32", "--max-len", "20", "--out", str(tmp_path / "pe.png")]) == 0
    assert (
        main(
            ["plot", "schedule", "--preset", "tiny", "warmup_steps=50", "--steps", "300", "--out", str(tmp_path / "s")]
        )
        == 0
    )
    run_dir = tmp_path / "run"
    write_metrics(run_dir, [{"step": 10, "train_loss": 2.0, "lr": 1e-4, "tokens_per_s": 900}])
    assert main(["plot", "run", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(tmp_path / "pe.png"),
        str(tmp_path / "s" / "schedule.png"),
        str(tmp_path / "s" / "schedule.svg"),
        str(run_dir / "curves.png"),
        str(run_dir / "curves.svg"),
    ]
    assert not (tmp_path / "pe.svg").exists()
    assert main(["plot", "run", str(tmp_path)]) == 2
    assert main(["plot", "schedule", "warmup=3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("aiayn: error: ") for line in err)
    assert "no metrics.csv" in err[0] and "unknown config key 'warmup'" in err[1]

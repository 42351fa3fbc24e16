"""Table 1 measured: its rows name layers the probes know, lengths are checked, and a tiny
``aiayn complexity`` runs end to end (the probes themselves: tests/claims/test_probes.py)."""

from __future__ import annotations

import json

import pytest

from aiayn.claims.complexity import KINDS, PROBES, parse_lengths
from aiayn.claims.probes import LAYERS
from aiayn.cli import main
from aiayn.config import AiaynError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_row_and_probe_names_a_layer_the_probes_build():
    assert {k.name for k in KINDS} | set(PROBES) <= set(LAYERS)


def test_bad_lengths_are_one_line_naming_the_option():
    assert parse_lengths("64, 16,32,16") == (16, 32, 64)
    for text in ("16", "16,x", "1,16", "16,100000"):
        with pytest.raises(AiaynError, match="--lengths"):
            parse_lengths(text)
    assert parse_lengths("9", option="--probe-lengths", fewest=1) == (9,)
    with pytest.raises(AiaynError, match="--probe-lengths"):
        parse_lengths("", option="--probe-lengths", fewest=1)


def test_tiny_complexity_end_to_end(tmp_path, capsys):
    out = tmp_path / "t1"
    code = main(
        ["complexity", "--out", str(out), "--d-model", "16", "--heads", "2", "--lengths", "8,16,32"]
        + ["--batch", "1", "--repeats", "1", "--warmup", "0", "--probe-lengths", "5,9"]
    )
    assert code == 0
    points = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    assert len(points) == len(KINDS) * 3
    assert all(p["seconds"] > 0 and p["peak_bytes"] > 0 for p in points)
    summary = json.loads((out / "table1.json").read_text())
    assert [r["name"] for r in summary["rows"]] == [k.name for k in KINDS]
    assert all(isinstance(r["time_slope"]["all"], float) for r in summary["rows"])
    assert summary["path_layers"]["convolutional (GLU)"] == {"5": 2, "9": 4}
    assert (out / "complexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "O(n²·d)" in (out / "table1.md").read_text()
    assert "Table 1 measured" in capsys.readouterr().out


def test_bad_complexity_options_fail_in_one_line(tmp_path, capsys):
    assert main(["complexity", "--out", str(tmp_path), "--d-model", "30", "--heads", "4"]) == 2
    assert "--d-model 30" in capsys.readouterr().err

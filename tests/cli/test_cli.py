"""cli.py: ``aiayn --help``, ``--version`` and ``model-info``."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from aiayn import __version__
from aiayn.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: aiayn" in out and "model-info" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "model-info" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"aiayn {__version__}"


def test_module_entry_point_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "aiayn", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "model-info" in done.stdout


def printed_parameters(out: str) -> int:
    match = re.search(r"^parameters: ([\d,]+) ", out, re.MULTILINE)
    assert match, out
    return int(match.group(1).replace(",", ""))


@pytest.mark.parametrize("preset, millions", [("base", 63.1), ("big", 214.0)])
def test_model_info_parameter_count(preset: str, millions: float, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-info", preset]) == 0
    out = capsys.readouterr().out
    assert round(printed_parameters(out) / 1e6, 1) == pytest.approx(millions, abs=0.5)
    assert f"preset: {preset}" in out and "d_model:" in out


def test_model_info_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-info", "base", "n_layers=2"]) == 0
    two_layers = printed_parameters(capsys.readouterr().out)
    assert main(["model-info", "base"]) == 0
    six_layers = printed_parameters(capsys.readouterr().out)
    # 4 encoder layers of 3,152,384 and 4 decoder layers of 4,204,032 parameters fewer.
    assert six_layers - two_layers == 4 * (3_152_384 + 4_204_032)


def test_model_info_bad_override_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-info", "base", "d_model=500"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiayn: error:")
    assert "model.d_model" in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""

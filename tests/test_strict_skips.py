"""strict_skips: in CI and `make test` a skipped test fails the run, unless skipped on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """
import pytest

def test_runs():
    pass

def test_needs_the_corpus():
    pytest.skip("needs the Debian packages bible-kjv and sword-text-sparv: no package lists")

@pytest.mark.skipif(True, reason="transformers is not installed")
def test_needs_a_package():
    pass

def test_skipped_on_purpose():
    pytest.skip("AIAYN_SKIP_BROWSER=1")
"""


def run_suite(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_suite.py").write_text(SUITE)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "AIAYN_STRICT_TESTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "strict_skips", "-p", "no:cacheprovider", "test_suite.py"],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(Path(__file__).parent), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("env", [{"CI": "true"}, {"AIAYN_STRICT_TESTS": "1"}])
def test_a_skip_fails_the_run_in_ci_and_make_test(tmp_path, env):
    done = run_suite(tmp_path, **env)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 error" in done.stdout  # a skipif fails in its setup: an error
    assert "skipped, which CI and `make test` do not allow (Skipped: needs the Debian packages" in done.stdout


def test_a_skip_is_only_a_skip_elsewhere(tmp_path):
    done = run_suite(tmp_path)
    assert done.returncode == 0 and "1 passed, 3 skipped" in done.stdout, done.stdout


def test_make_test_runs_the_suite_strictly():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "AIAYN_STRICT_TESTS=1 $(BIN)/pytest -q" in makefile

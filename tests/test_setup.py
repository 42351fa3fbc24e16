"""The Makefile's setup: torch's CPU build, from PyTorch's CPU index where it answers, and a CUDA
build refused with one message saying what to do (docs: README.md, "GPU")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_cuda_build_of_torch_is_refused_and_the_cpu_build_passes(tmp_path):
    bin_dir = str(Path(sys.executable).parent)  # this interpreter, whose torch is the CPU build
    assert make("check-cpu-torch", f"BIN={bin_dir}").returncode == 0
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        '__version__ = "2.13.0+cu128"\n\n\nclass version:\n    cuda, hip = "12.8", None\n'
    )
    done = make("check-cpu-torch", f"BIN={bin_dir}", PYTHONPATH=str(tmp_path))
    assert done.returncode != 0
    assert "holds torch 2.13.0+cu128, a GPU build" in done.stderr and "rm -rf .venv" in done.stderr


def test_setup_installs_torch_from_the_cpu_index_and_checks_it_before_the_rest():
    commands = make("-n", "-B", "setup").stdout.splitlines()
    torch_line = next(i for i, c in enumerate(commands) if "pip install" in c)
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in commands[torch_line]
    assert "--no-deps torch==2.13.0" in commands[torch_line]  # the fallback, checked before its dependencies
    check = next(i for i, c in enumerate(commands) if "check-cpu-torch" in c)
    rest = next(i for i, c in enumerate(commands) if "-e '.[test,tensorboard]'" in c)
    assert torch_line < check < rest
    assert "test: $(STAMP) check-cpu-torch" in (ROOT / "Makefile").read_text()

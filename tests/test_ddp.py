"""Two gloo ranks stopped halfway and resumed end where an uninterrupted run ends, bit for bit;
resuming their checkpoint with another number of processes is a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toydata import make_toy_data

from aiayn import checkpoint as ckpt

STEPS = 16
# dropout on, so that a rank whose random state were not restored would draw other masks
COMMON = [
    *("--preset", "tiny", "threads=1", "valid_bleu_sentences=0", "precision=fp32", "dropout=0.1"),
    *("eval_every=1000", "checkpoint_every_steps=1000", "checkpoint_every_minutes=0"),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# --standalone: a rendezvous on a free local port, so the test never collides with another job
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aiayn"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("toy"))


def torchrun(*args: str) -> None:
    done = subprocess.run([*TORCHRUN, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def final_state(run: Path) -> dict:
    return ckpt.load_checkpoint(ckpt.step_path(run, STEPS))


def assert_equal_tensors(a, b, where: str = "") -> None:
    """``a`` and ``b`` (nested dicts and lists of tensors and numbers) are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs by {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_two_ranks_stopped_halfway_resume_bit_exactly_and_refuse_one_process(toy, tmp_path):
    full, halves = tmp_path / "full", tmp_path / "halves"
    torchrun("train", "--data", str(toy), "--out", str(full), *COMMON, f"max_steps={STEPS}")
    torchrun("train", "--data", str(toy), "--out", str(halves), *COMMON, f"max_steps={STEPS // 2}")
    assert [p.name for p in ckpt.list_checkpoints(halves)] == [ckpt.step_path(halves, STEPS // 2).name]
    torchrun("train", "--resume", str(halves), f"max_steps={STEPS}")

    # Weights, Adam's moments and step counts, each rank's data position and random states.
    expected, resumed = final_state(full), final_state(halves)
    for key in ("model", "optimizer", "stream", "rng"):
        assert_equal_tensors(expected[key], resumed[key], key)

    # The same checkpoint resumed by one process: the world-size error, one line, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "aiayn", "train", "--resume", str(halves), f"max_steps={STEPS + 4}"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "aiayn: error: the checkpoint was written by 2 process(es); resume it with the same number (now 1)"
    ]
    assert "Traceback" not in done.stderr
    assert ckpt.list_checkpoints(halves)[-1].name == ckpt.step_path(halves, STEPS).name  # nothing written

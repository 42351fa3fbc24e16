"""Two gloo ranks killed with SIGKILL mid-run, between two checkpoints, and resumed end where an
uninterrupted run ends, bit for bit; resuming their checkpoint with another number of processes is
a one-line error."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from toydata import make_toy_data

from aiayn.training import checkpoint as ckpt

STEPS, EVERY = 24, 4  # a checkpoint every EVERY steps
# dropout on, so that a rank whose random state were not restored would draw other masks
COMMON = [
    *("--preset", "tiny", "threads=1", "valid_bleu_sentences=0", "precision=fp32", "dropout=0.1"),
    *("eval_every=1000", f"checkpoint_every_steps={EVERY}", "checkpoint_every_minutes=0", f"max_steps={STEPS}"),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# --standalone: a rendezvous on a free local port, so the test never collides with another job
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aiayn"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("toy"))


def torchrun(*args: str) -> None:
    """Run torchrun to its end; its output goes to a file, not a pipe, which its ranks (in sessions
    of their own) could hold open after a timeout; whatever happens, none of them is left running."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*TORCHRUN, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            code = proc.wait(timeout=600)
        finally:
            kill_tree(proc)
        err.seek(0)
        assert code == 0, err.read()[-3000:]


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


def newest_step(run: Path) -> int:
    paths = ckpt.list_checkpoints(run)
    return int(paths[-1].stem.split("_")[1]) if paths else 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc: torchrun starts each rank in a session of its own,
    so killing torchrun's process group would leave the ranks running on."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # "pid (name) state ppid ..."
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_after_first_checkpoint(*args: str) -> int:
    """Start the two-rank run and SIGKILL torchrun and both ranks as soon as the first checkpoint
    is there, so the kill lands after it and before the next; return the step of the newest
    checkpoint left, once no process of the run is left to write another."""
    proc = subprocess.Popen([*TORCHRUN, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = Path(args[args.index("--out") + 1])
    tree = []
    try:
        deadline = time.monotonic() + 600
        while newest_step(run) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        tree = process_tree(proc.pid)
        assert len(tree) >= 3, f"torchrun and two ranks expected, found {len(tree)} processes"
    finally:
        kill_tree(proc, tree)
    return newest_step(run)


def kill_tree(proc: subprocess.Popen, tree: list[int] | None = None) -> None:
    """SIGKILL ``proc`` and its descendants (``tree``, else as found now) and wait until none is left."""
    tree = tree or process_tree(proc.pid)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in tree), "a rank outlived SIGKILL"


def test_two_ranks_killed_between_checkpoints_resume_bit_exactly_and_refuse_one_process(toy, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    torchrun("train", "--data", str(toy), "--out", str(full), *COMMON)
    left = kill_after_first_checkpoint("train", "--data", str(toy), "--out", str(killed), *COMMON)
    assert EVERY <= left < STEPS  # killed mid-run, with at least one checkpoint written
    torchrun("train", "--resume", str(killed))

    # Weights, Adam's moments and step counts, each rank's data position and random states.
    expected, resumed = final_state(full), final_state(killed)
    for key in ("model", "optimizer", "stream", "rng"):
        assert_equal_tensors(expected[key], resumed[key], key)

    # The same checkpoint resumed by one process: the world-size error, one line, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "aiayn", "train", "--resume", str(killed), f"max_steps={STEPS + 4}"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,  # a loaded 2-core machine can take minutes to start and stop a torch process
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "aiayn: error: the checkpoint was written by 2 process(es); resume it with the same number (now 1)"
    ]
    assert "Traceback" not in done.stderr
    assert ckpt.list_checkpoints(killed)[-1].name == ckpt.step_path(killed, STEPS).name  # nothing written

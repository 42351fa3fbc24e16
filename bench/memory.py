"""Training memory: the resident set of ``aiayn train`` over a time-boxed run, per precision.

    python -m bench.memory --data data/bible --minutes 30 --precisions fp32,bf16

Each precision runs ``aiayn train --preset small max_minutes=M precision=P`` as a user runs it,
in a child process, one after the other. Every ``--interval`` seconds the bench reads the
resident set (VmRSS in /proc/PID/status) of that process and of its children. Reported per
run, as one JSON line on stdout and a table on stderr: updates made, minutes, and the RSS at
the start of training (the first sample after the trainer printed its start line, so loading
the corpus and building the model are in it), its peak, its median and its value at the end.
``--set key=value`` passes config overrides and ``--env NAME=VALUE`` environment variables
(e.g. ``--env MALLOC_ARENA_MAX=2``), which is how docs/performance.md's variations ran.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from aiayn.config import AiaynError
from bench.common import Reporter, find_data, run_main, status_kib

START_LINE = re.compile(r"aiayn: [\d,]+ parameters")  # printed by Trainer.run before the first update


def _children(pid: int) -> list[int]:
    """Every process below ``pid``, found through the parent ids in /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = parents.get(todo.pop(), [])
        found += below
        todo += below
    return found


def rss_mb(pid: int) -> float | None:
    """Resident set of ``pid`` and its children in MB; None once ``pid`` has exited."""
    own = status_kib("VmRSS", pid)
    if own is None:
        return None
    return (own + sum(status_kib("VmRSS", child) or 0 for child in _children(pid))) / 1024


class Watched:
    """``aiayn train`` in a child process: its output passed through to our stderr (stdout is
    for the JSON lines), the moment its training loop started noted, its RSS sampled every
    ``interval`` seconds until it exits."""

    def __init__(self, command: list[str], env: dict[str, str]):
        print(f"bench: $ {shlex.join(command)}", file=sys.stderr, flush=True)
        # One pipe for both: the trainer's start line goes to stdout (tqdm.write), the bar to stderr.
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.started: float | None = None  # seconds after launch at which training began
        self.precision = ""
        self.launched = time.monotonic()
        self.reader = threading.Thread(target=self._read_output, daemon=True)
        self.reader.start()

    def _read_output(self) -> None:
        for line in self.proc.stdout:
            sys.stderr.write(line)
            if self.started is None and START_LINE.search(line):
                self.started = time.monotonic() - self.launched
                found = re.search(r"precision (\w+)", line)
                self.precision = found.group(1) if found else ""

    def sample(self, interval: float) -> list[tuple[float, float]]:
        """(seconds after launch, RSS MB) until the process exits."""
        samples = []
        while self.proc.poll() is None:
            mb = rss_mb(self.proc.pid)
            if mb is not None:
                samples.append((time.monotonic() - self.launched, mb))
            time.sleep(interval)
        self.reader.join()
        return samples


def updates_made(run: Path) -> int:
    """The step of the last row of the run's metrics.csv (the final evaluation's row)."""
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["step"]) if rows else 0


def summarize(samples: list[tuple[float, float]], started: float | None) -> dict[str, Any]:
    training = [mb for t, mb in samples if started is not None and t >= started]
    if not training:
        raise AiaynError("aiayn train ended before its first update was sampled; give it more --minutes")
    return {
        "rss_start_mb": round(training[0], 1),
        "rss_peak_mb": round(max(training), 1),
        "rss_p50_mb": round(statistics.median(training), 1),
        "rss_final_mb": round(training[-1], 1),
        "samples": len(training),
        # (minutes since launch, MB): the curve, for plotting and for seeing when growth stops
        "rss_trace": [(round(t / 60, 3), round(mb, 1)) for t, mb in samples],
    }


def measure(args: argparse.Namespace, data: Path, precision: str, work: Path) -> dict[str, Any]:
    run = work / precision
    command = [
        sys.executable,
        "-m",
        "aiayn",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--preset",
        args.preset,
        f"max_minutes={args.minutes}",
        f"precision={precision}",
        f"threads={args.threads}",
        *args.set,
    ]
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    watched = Watched(command, env)
    samples = watched.sample(args.interval)
    if watched.proc.returncode:
        raise AiaynError(f"aiayn train ({precision}) failed with status {watched.proc.returncode}; its stderr is above")
    return {
        "precision": precision,
        "chosen": watched.precision,  # what the trainer reported running
        "updates": updates_made(run),
        "minutes": round((samples[-1][0] if samples else 0.0) / 60, 2),
        "train_minutes": args.minutes,
        **summarize(samples, watched.started),
    }


def table(records: list[dict[str, Any]]) -> None:
    head = ["precision", "updates", "minutes", "RSS start", "peak", "p50", "final (MB)"]
    rows = [head] + [
        [
            r["precision"],
            f"{r['updates']:,}",
            f"{r['minutes']:.1f}",
            *(f"{r[k]:,.0f}" for k in ("rss_start_mb", "rss_peak_mb", "rss_p50_mb", "rss_final_mb")),
        ]
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    env = records[0]
    print(
        f"\ntrain-memory: aiayn train --preset {env['preset']}, {env['cpu']}, {env['threads']} threads, "
        f"torch {env['torch']}" + (f", env {' '.join(env['env'])}" if env["env"] else ""),
        file=sys.stderr,
    )
    for row in rows:
        print(
            "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))),
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Resident memory of aiayn train over a time-boxed run, per precision.")
    p.add_argument("--data", help="a prepared data folder (default: ~/.cache/aiayn/test-bible or data/bible)")
    p.add_argument("--minutes", type=float, default=30, help="training minutes per run (default 30)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated, run in this order (default fp32,bf16)")
    p.add_argument("--preset", default="small", help="the aiayn preset (default small)")
    p.add_argument("--threads", type=int, default=2, help="the trainer's threads (default 2)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an environment variable")
    p.add_argument("--work", help="folder for the run folders (default: a temporary one, removed)")
    args = p.parse_args(argv)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or not set(precisions) <= {"fp32", "bf16", "auto"}:
        raise AiaynError(f"--precisions: expected fp32, bf16 or auto, comma-separated; got '{args.precisions}'")
    if args.minutes <= 0 or args.interval <= 0:
        raise AiaynError("--minutes and --interval must be positive")
    if any("=" not in item for item in args.set + args.env):
        raise AiaynError("--set and --env take NAME=VALUE")
    data = find_data(args.data)
    if data is None:
        raise AiaynError("no prepared data folder found; give --data DIR (made by `aiayn prepare`)")
    report = Reporter("train-memory", torch.device("cpu"), args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for precision in precisions:
            found = measure(args, data, precision, work)
            report.emit(preset=args.preset, data=str(data), overrides=args.set, env=args.env, **found)
    table(report.records)


if __name__ == "__main__":
    run_main(main)

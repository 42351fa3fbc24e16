"""What every benchmark shares: options, the machine's description, timing, memory, the
matmul peak, JSON lines on stdout and the summary table on stderr."""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aiayn.config import AiaynError, Config, load_config

# ---------------------------------------------------------------------------- options and machine


def parser(description: str, presets: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short smoke run: the tiny preset, small inputs")
    p.add_argument("--presets", default=presets, help=f"comma-separated aiayn presets (default {presets})")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions after warm-up (at least 5)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every implementation (default 2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    p.add_argument("--compile", action="store_true", help="torch.compile the PyTorch models (aiayn's train.compile)")
    p.add_argument("--data", help="a prepared data folder (default: ~/.cache/aiayn/test-bible or data/bible)")
    p.add_argument("--profile", action="store_true", help="also profile aiayn and print the top operators")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.reps < 5 and not args.quick:
        raise AiaynError(f"--reps must be at least 5 (got {args.reps}); medians of fewer runs are noise")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise AiaynError("--device cuda: no CUDA device is visible to torch; run on a GPU machine or drop the option")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def presets(args: argparse.Namespace) -> list[str]:
    return ["tiny"] if args.quick else [p.strip() for p in args.presets.split(",") if p.strip()]


def preset_config(name: str, vocab_size: int | None = None, **overrides: Any) -> Config:
    items = [f"{k}={v}" for k, v in overrides.items()]
    if vocab_size is not None:
        items.append(f"vocab_size={vocab_size}")
    return load_config(name, overrides=items)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    env = {"threads": threads, "device": device.type, "torch": torch.__version__, "cpu": cpu_model()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def find_data(path: str | None) -> Path | None:
    """The prepared Bible folder: ``path``, else the test cache, else ``data/bible``; None if absent."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aiayn" / "test-bible"
    for folder in [Path(path)] if path else [cache, Path("data/bible")]:
        if (folder / "spm.model").is_file() and (folder / "meta.json").is_file():
            return folder
    if path:
        raise AiaynError(f"{path}: not a prepared data folder (no spm.model or meta.json); run `aiayn prepare` first")
    return None


# ---------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeat(fn: Callable[[], Any], reps: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def rate_stats(work: float, times: list[float]) -> dict[str, float]:
    """Median, min and max of ``work`` / time over the repetitions."""
    rates = [work / t for t in times]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "reps": len(times)}


def status_kib(field: str, pid: int | str = "self") -> int | None:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in KiB; None when the process is gone
    or has no such line (a zombie, exited and not yet reaped, has none)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else None


class PeakMemory:
    """Peak memory of the code run inside ``with``: on CUDA the allocator's high-water mark;
    on a CPU the process's resident-set high-water mark (VmHWM, reset through
    /proc/self/clear_refs, so each measurement starts from the memory already resident).

    ``peak_mb`` is the process peak, ``added_mb`` what the code added on top of the start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = self.added_mb = float("nan")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        try:  # hand freed heap pages back so that the start is what is really in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.start = status_kib("VmRSS") * 1024
        except OSError:
            self.start = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.start is not None:
            peak = status_kib("VmHWM") * 1024
        else:
            return
        self.peak_mb, self.added_mb = peak / 2**20, (peak - self.start) / 2**20


def matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5
) -> dict[str, float]:
    """GFLOP/s of an n×n by n×n matmul (2n³ FLOPs) at the current thread count: median, min
    and max over ``reps``; the max is the peak that model FLOP utilisation is measured against."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return rate_stats(2 * n**3 / 1e9, repeat(lambda: a @ b, reps, device, warmup=2))


def profile_top(fn: Callable[[], Any], device: torch.device, title: str, rows: int = 12) -> list[dict[str, Any]]:
    """Run ``fn`` once under torch.profiler; print the operator table (by self CPU time) to
    stderr and return the top ``rows`` operators with their share of all self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    print(f"\n== profile: {title} ==", file=sys.stderr)
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows), file=sys.stderr)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    return [
        {
            "op": e.key,
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 4),
            "calls": e.count,
        }
        for e in top
    ]


# ---------------------------------------------------------------------------- reporting


class Reporter:
    """Prints one JSON line per measurement (stdout) and keeps them for the summary (stderr)."""

    def __init__(self, bench: str, device: torch.device, threads: int):
        self.bench, self.env = bench, environment(device, threads)
        self.records: list[dict[str, Any]] = []

    def emit(self, **fields: Any) -> dict[str, Any]:
        record = {"bench": fields.pop("bench", self.bench), **fields, **self.env}
        print(json.dumps(record), flush=True)
        self.records.append(record)
        return record

    def summary(self, extra: tuple[str, ...] = ()) -> None:
        """An aligned table of the measurements: median (min–max) and aiayn's speedup."""
        rows = [r for r in self.records if "median" in r]
        if not rows:
            return
        head = ["impl", "preset", "batch", "median (min-max)", "unit", "aiayn speedup", *extra]
        table = [head]
        for r in rows:
            speedup = r.get("aiayn_speedup")
            table.append(
                [
                    str(r.get("impl", "")),
                    str(r.get("preset", "")),
                    str(r.get("batch", "")),
                    f"{r['median']:,.1f} ({r['min']:,.1f}-{r['max']:,.1f})",
                    r.get("unit", ""),
                    "" if speedup is None else f"{speedup:.2f}x",
                    *(_cell(r.get(k)) for k in extra),
                ]
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        print(
            f"\n{self.bench}: {self.env['cpu']}, {self.env['threads']} threads, {self.env['device']}, "
            f"torch {self.env['torch']}",
            file=sys.stderr,
        )
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=sys.stderr)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a benchmark's main; a user error prints one line and exits with status 2."""
    try:
        main(argv)
    except AiaynError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(2)

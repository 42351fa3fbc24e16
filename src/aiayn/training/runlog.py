"""What a training run writes about itself as it goes: metrics.csv, TensorBoard events, tokens/s."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

METRICS = (
    "step epoch minutes train_loss train_nll lr tokens_per_s grad_norm valid_loss valid_ppl valid_bleu valid_beam_bleu "
    "ema_valid_loss ema_valid_ppl"
).split()


class MetricsLog:
    """metrics.csv (always) and TensorBoard event files in RUN/tb (when tensorboard is installed)."""

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resume_step and self.path.is_file():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRICS)
            writer.writeheader()
            writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:
            self.tb = None

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, METRICS).writerow({k: row.get(k, "") for k in METRICS})
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()


class RateMeter:
    """Target tokens per second since the last reading."""

    def __init__(self):
        self.tokens, self.start = 0.0, time.monotonic()

    def add(self, tokens: float) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        rate = self.tokens / max(time.monotonic() - self.start, 1e-9)
        self.tokens, self.start = 0.0, time.monotonic()
        return rate


def report_outside(run_dir: Path, outside: dict[str, list], run_minutes: float, updates: int) -> None:
    """One line and ``timing.json``: the budget's minutes, and how much of them went to validation
    and checkpoint writes rather than updates (``outside``: kind -> [seconds, count])."""
    (val_s, val_n), (ckpt_s, ckpt_n) = outside["validation"], outside["checkpoints"]
    spent = (val_s + ckpt_s) / 60
    timing = {
        "updates": updates,
        "minutes": round(run_minutes, 3),
        "update_minutes": round(run_minutes - spent, 3),
        "validation_minutes": round(val_s / 60, 3),
        "validation_passes": val_n,
        "checkpoint_minutes": round(ckpt_s / 60, 3),
        "checkpoint_writes": ckpt_n,
        "outside_fraction": round(spent / max(run_minutes, 1e-9), 4),
    }
    (run_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(
        f"aiayn: {updates:,} updates in {run_minutes:.1f} min; outside the updates: validation "
        f"{val_s / 60:.2f} min ({val_n} passes), checkpoints {ckpt_s / 60:.2f} min ({ckpt_n} writes), "
        f"{100 * timing['outside_fraction']:.1f} % of the run",
        file=sys.stderr,
    )

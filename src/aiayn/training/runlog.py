"""What a training run writes about itself as it goes: metrics.csv, TensorBoard events, tokens/s."""

from __future__ import annotations

import csv
import time
from pathlib import Path

METRICS = (
    "step epoch minutes train_loss train_nll lr tokens_per_s grad_norm valid_loss valid_ppl valid_bleu valid_beam_bleu"
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

"""Quality per CPU minute: aiayn ``small`` against a stock Hugging Face Marian of the same shape
with the paper's recipe, each trained for the same wall-clock minutes on the same machine and
the same data folder, one after the other, both decoded with beam 4 on the test split.

    python -m bench.quality                                   # the Bible, 20 minutes each
    python -m bench.quality --data data/kjv-web --minutes 30  # any `aiayn prepare` folder

aiayn runs as a user runs it: ``aiayn train --preset small max_minutes=M``, then ``aiayn average``
and ``aiayn tune-decoding`` (both choose on the valid split, never on test), then
``aiayn evaluate`` on test. The peer is bench/marian_peer.py. One JSON line per system on stdout
(BLEU, chrF, length ratio, brevity penalty, updates, target tokens/s, minutes) and a table on
stderr. ``--aiayn-args`` passes config overrides, which is how docs/quality.md's ablations ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aiayn.config import AiaynError
from bench.common import environment, find_data, run_main


def bleu_details(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    from sacrebleu.metrics import BLEU

    b = BLEU().corpus_score(hypotheses, [references])
    return {
        "length_ratio": round(b.sys_len / max(b.ref_len, 1), 3),
        "bp": round(b.bp, 3),
        "precisions": [round(p, 1) for p in b.precisions],
    }


def aiayn_cli(*args: str) -> None:
    """``python -m aiayn ARGS`` in a child process: exactly what a user runs. Its output goes to
    stderr, so stdout holds only the JSON lines."""
    cmd = [sys.executable, "-m", "aiayn", *args]
    print(f"bench: $ aiayn {shlex.join(args)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=sys.stderr)
    if done.returncode:
        raise AiaynError(f"`aiayn {shlex.join(args)}` failed with status {done.returncode}")


def run_aiayn(
    data: Path, work: Path, minutes: float, max_steps: int, threads: int, overrides: list[str], tune: bool
) -> dict[str, Any]:
    run = work / "aiayn"
    if run.exists():
        raise AiaynError(f"{run} exists; give another --work folder or remove it")
    budget = [f"max_minutes={minutes}"] if minutes else []
    budget += [f"max_steps={max_steps}"] if max_steps else []
    start = time.monotonic()
    aiayn_cli(
        "train", "--data", str(data), "--out", str(run), "--preset", "small", f"threads={threads}", *budget, *overrides
    )
    train_s = time.monotonic() - start
    start = time.monotonic()
    aiayn_cli("average", str(run), "--last", "5", "--sentences", "500")
    if tune:
        aiayn_cli("tune-decoding", "--model", str(run))
    select_s = time.monotonic() - start
    aiayn_cli("evaluate", "--model", str(run), "--data", str(data), "--split", "test", "--out", str(run / "eval"))
    scores = json.loads((run / "eval" / "scores.json").read_text())
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    steps = int(rows[-1]["step"])
    rates = [float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
    selection = json.loads(torch.load(run / "averaged.pt", weights_only=True).get("selection", "{}"))
    hyps = (run / "eval").glob("hyp.*")
    from aiayn.corpus import read_split

    refs = read_split(data, "test")[1]
    hypotheses = next(hyps).read_text(encoding="utf-8").splitlines()
    return {
        "system": "aiayn-small",
        "updates": steps,
        "epochs": int(rows[-1]["epoch"]),
        "train_minutes": round(train_s / 60, 2),
        "select_minutes": round(select_s / 60, 2),
        "tgt_tok_per_s": round(sum(rates) / max(len(rates), 1)),
        "valid_nll": round(math.log(float(rows[-1]["valid_ppl"])), 4) if rows[-1].get("valid_ppl") else None,
        "averaging": selection.get("selected"),
        "beam": scores["beam_size"],
        "length_penalty": scores["length_penalty"],
        "alpha": scores["alpha"],
        "bleu": round(scores["bleu"], 2),
        "chrf": round(scores["chrf"], 2),
        "signature": scores["bleu_signature"],
        "overrides": overrides,
        **bleu_details(hypotheses, refs),
    }


def run_marian(data: Path, minutes: float, max_steps: int, threads: int) -> dict[str, Any]:
    from bench import marian_peer

    torch.set_num_threads(threads)
    found = marian_peer.run(data, minutes=minutes, max_steps=max_steps)
    from aiayn.corpus import read_split

    refs = read_split(data, "test")[1]
    hyps = found.pop("hypotheses")
    return {
        **{k: v for k, v in found.items() if k not in ("bleu_detail", "chrf_signature", "sentences")},
        "bleu": round(found["bleu"], 2),
        "chrf": round(found["chrf"], 2),
        "signature": found["bleu_signature"],
        "beam": 4,
        "length_penalty": "hf |Y|^a",
        "alpha": 0.6,
        **bleu_details(hyps, refs),
    }


COLUMNS = (
    "system",
    "updates",
    "train_minutes",
    "tgt_tok_per_s",
    "valid_nll",
    "bleu",
    "chrf",
    "length_ratio",
    "bp",
    "beam",
    "length_penalty",
    "alpha",
)


def table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)] + [["" if r.get(c) is None else str(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a prepared data folder (default: data/bible, prepared if missing)")
    p.add_argument("--minutes", type=float, default=20.0, help="training minutes for each system (default 20)")
    p.add_argument("--max-steps", type=int, default=0, help="also stop each system after this many updates")
    p.add_argument("--systems", default="aiayn,marian", help="which to run, in order (default aiayn,marian)")
    p.add_argument("--aiayn-args", default="", help="config overrides for aiayn, e.g. 'schedule=inverse_sqrt'")
    p.add_argument("--no-tune", action="store_true", help="decode aiayn with its config's settings (beam 4, α 0.6)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both (default 2)")
    p.add_argument("--work", default="runs/quality", help="folder for both runs (default runs/quality)")
    args = p.parse_args(argv)
    data = Path(args.data) if args.data else find_data(None)
    if data is None or not (data / "meta.json").is_file():
        raise AiaynError(f"{args.data or 'data/bible'}: no prepared data folder; run `aiayn prepare bible` first")
    if args.minutes <= 0 and args.max_steps <= 0:
        raise AiaynError("give a budget: --minutes M and/or --max-steps N")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in ("aiayn", "marian"):
            raise AiaynError(f"--systems: unknown system '{s}' (aiayn, marian)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = environment(torch.device("cpu"), args.threads)
    rows = []
    for system in systems:
        if system == "aiayn":
            row = run_aiayn(
                data, work, args.minutes, args.max_steps, args.threads, shlex.split(args.aiayn_args), not args.no_tune
            )
        else:
            row = run_marian(data, args.minutes, args.max_steps, args.threads)
        row = {"bench": "quality", "data": str(data), "minutes": args.minutes, **row, **env}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\nquality: {data}, {args.minutes:g} minutes each, {env['cpu']}, {args.threads} threads", file=sys.stderr)
    print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    run_main(main)

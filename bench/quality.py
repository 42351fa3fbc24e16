"""Quality per CPU minute: aiayn ``small`` against a stock Hugging Face Marian of the same shape
with the paper's recipe, each trained for the same budget on the same machine and the same
data folder, one after the other, at the same precision.

    python -m bench.quality                                   # the Bible, 20 minutes each
    python -m bench.quality --data data/kjv-web --minutes 30  # any `aiayn prepare` folder
    python -m bench.quality --minutes 0 --max-steps 1500 --seeds 3 --nll-only   # per update

aiayn runs as a user runs it: ``aiayn train --preset small max_minutes=M``, then ``aiayn average``
and ``aiayn tune-decoding`` (both choose on the valid split, never on test), then
``aiayn evaluate`` on test. The peer is bench/marian_peer.py. Both are trained in bf16 autocast
exactly where aiayn's precision probe picks bf16 on this machine (``--peer-precision auto``: a
competent Hugging Face user turns it on), else both in float32. ``--max-steps`` with
``--minutes 0`` gives both the same number of updates; ``--nll-only`` then skips decoding and
compares the valid NLL (float32, unsmoothed, per target token) alone: of each system's last
weights, and of aiayn's tail-checkpoint average, the candidate ``aiayn average`` offers. One JSON line per run and
one summary line per system (mean and spread over ``--seeds``) on stdout, a table on stderr,
and ``WORK/quality.png``: valid NLL against updates and against minutes, for both systems, the
band spanning the seeds (``--first-seed S`` starts them at S, so that seeds can run in separate
invocations and ``--replot`` joins them). ``--aiayn-args`` passes config overrides, which is how
docs/quality.md's ablations ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aiayn.config import AiaynError, load_config
from bench.common import environment, find_data, run_main
from bench.quality_report import plot, replot, summarize, table


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


def probe_precision(data: Path, threads: int) -> str:
    """What aiayn's own probe picks for ``small`` on this CPU (train.precision=auto): bf16 or fp32."""
    from aiayn.data.tokenizer import Tokenizer
    from aiayn.models.transformer import Transformer
    from aiayn.training.precision import choose_precision

    torch.set_num_threads(threads)
    cfg = load_config("small", overrides=[f"vocab_size={Tokenizer.load(data).vocab_size}"])
    log = lambda m: print(f"bench: {m}", file=sys.stderr)  # noqa: E731
    return "bf16" if choose_precision("auto", torch.device("cpu"), Transformer(cfg.model), 3000, log=log) else "fp32"


def aiayn_curve(rows: list[dict[str, str]]) -> list[dict[str, float]]:
    """Valid NLL by update from metrics.csv (``ema_nll``: the moving average's, for a run with
    ``train.ema_decay``); the end-of-run row replaces an evaluation at the same step."""
    points = {
        int(r["step"]): {
            "step": int(r["step"]),
            "minutes": float(r["minutes"]),
            "nll": round(math.log(float(r["valid_ppl"])), 4),
            **({"ema_nll": round(math.log(float(r["ema_valid_ppl"])), 4)} if r.get("ema_valid_ppl") else {}),
        }
        for r in rows
        if r.get("valid_ppl")
    }
    return list(points.values())


@torch.no_grad()
def weights_nll(weights: dict[str, torch.Tensor], config: str, data: Path) -> float:
    """Valid NLL of some weights as training measures it: float32, unsmoothed, per target subword,
    EOS included, over the same fixed valid batches."""
    from aiayn.config.load import from_dict
    from aiayn.data.batching import fixed_batches, tokenized_split
    from aiayn.data.symbols import open_tokenizer
    from aiayn.models.build import build_model
    from aiayn.training.loss import label_smoothed_cross_entropy

    cfg = from_dict(json.loads(config))
    _, _, vs, vt = tokenized_split(data, "valid", open_tokenizer(data))
    model = build_model(cfg.model)
    model.load_state_dict(weights)
    model.eval()
    nll_sum = tokens = 0.0
    for b in fixed_batches(vs, vt, cfg.data.batch_tokens, cfg.data.max_len):
        logits = model(b.src, b.tgt_in, b.src_mask, b.tgt_mask).float()  # (n, V)
        _, nll, n = label_smoothed_cross_entropy(logits, b.tgt_out[b.tgt_mask], 0.0)
        nll_sum, tokens = nll_sum + nll.item(), tokens + n
    return nll_sum / max(tokens, 1)


def tail_average_nll(run: Path, data: Path, last: int = 5) -> dict[str, Any]:
    """The valid NLL of the average of the run's last ``last`` checkpoints, which ``aiayn average``
    offers against the last checkpoint: with ``--nll-only`` nothing is decoded, so the delivered
    candidates are compared by NLL instead."""
    from aiayn.training import checkpoint as ckpt

    states = [ckpt.load_checkpoint(p) for p in ckpt.list_checkpoints(run)[-last:]]
    averaged = ckpt.average_state_dicts([s["model"] for s in states])
    return {
        "average_steps": [int(s["step"]) for s in states],
        "average_valid_nll": round(weights_nll(averaged, states[-1]["config"], data), 4),
    }


def run_aiayn(
    data: Path,
    run: Path,
    minutes: float,
    max_steps: int,
    threads: int,
    overrides: list[str],
    *,
    tune: bool,
    seed: int,
    precision: str,
    nll_only: bool,
    eval_every: int,
) -> dict[str, Any]:
    if run.exists():
        raise AiaynError(f"{run} exists; give another --work folder or remove it")
    budget = [f"max_minutes={minutes}"] if minutes else []
    budget += [f"max_steps={max_steps}"] if max_steps else []
    settings = [f"threads={threads}", f"seed={seed}", f"precision={precision}", f"eval_every={eval_every}"]
    if nll_only:
        settings.append("valid_bleu_sentences=0")
    start = time.monotonic()
    aiayn_cli("train", "--data", str(data), "--out", str(run), "--preset", "small", *settings, *budget, *overrides)
    train_s = time.monotonic() - start
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    timing = json.loads((run / "timing.json").read_text())
    rates = [float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
    row = {
        "system": "aiayn-small",
        "precision": precision,
        "seed": seed,
        "updates": int(rows[-1]["step"]),
        "epochs": int(rows[-1]["epoch"]),
        "train_minutes": round(train_s / 60, 2),
        "outside_updates": timing["outside_fraction"],
        "tgt_tok_per_s": round(statistics.fmean(rates)) if rates else None,
        "valid_nll": round(math.log(float(rows[-1]["valid_ppl"])), 4),
        "ema_valid_nll": round(math.log(float(rows[-1]["ema_valid_ppl"])), 4)
        if rows[-1].get("ema_valid_ppl")
        else None,
        "curve": aiayn_curve(rows),
        "overrides": overrides,
    }
    if nll_only:
        return {**row, **tail_average_nll(run, data)}
    start = time.monotonic()
    aiayn_cli("average", str(run), "--last", "5", "--sentences", "500")
    if tune:
        aiayn_cli("tune-decoding", "--model", str(run))
    select_s = time.monotonic() - start
    aiayn_cli("evaluate", "--model", str(run), "--data", str(data), "--split", "test", "--out", str(run / "eval"))
    scores = json.loads((run / "eval" / "scores.json").read_text())
    selection = json.loads(torch.load(run / "averaged.pt", weights_only=True).get("selection", "{}"))
    hyps = (run / "eval").glob("hyp.*")
    from aiayn.data.corpus import read_split

    refs = read_split(data, "test")[1]
    hypotheses = next(hyps).read_text(encoding="utf-8").splitlines()
    return {
        **row,
        "select_minutes": round(select_s / 60, 2),
        "averaging": selection.get("selected"),
        "beam": scores["beam_size"],
        "length_penalty": scores["length_penalty"],
        "alpha": scores["alpha"],
        "bleu": round(scores["bleu"], 2),
        "chrf": round(scores["chrf"], 2),
        "signature": scores["bleu_signature"],
        **bleu_details(hypotheses, refs),
    }


def run_marian(
    data: Path,
    minutes: float,
    max_steps: int,
    threads: int,
    *,
    seed: int,
    precision: str,
    nll_only: bool,
    eval_every: int,
) -> dict[str, Any]:
    from bench import marian_peer

    torch.set_num_threads(threads)
    found = marian_peer.run(
        data,
        minutes=minutes,
        max_steps=max_steps,
        seed=seed,
        bf16=precision == "bf16",
        eval_every=eval_every,
        split=None if nll_only else "test",
    )
    if nll_only:
        return found
    from aiayn.data.corpus import read_split

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
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="aiayn's training precision: auto (default) runs aiayn's own probe once, here",
    )
    p.add_argument(
        "--peer-precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto (default): the precision aiayn trains at (bf16 autocast where its probe picks bf16)",
    )
    p.add_argument("--seeds", type=int, default=1, help="train each system with K seeds (default 1)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=1,
        help="the first of the K seeds (default 1): runs of one comparison split over several invocations",
    )
    p.add_argument(
        "--nll-only", action="store_true", help="no decoding: compare the final valid NLL (and the curves) alone"
    )
    p.add_argument("--eval-every", type=int, default=250, help="updates between points of the valid-NLL curves")
    p.add_argument(
        "--replot",
        nargs="+",
        metavar="JSONL",
        help="train nothing: plot and summarise the runs in these earlier outputs together (each run "
        "labelled by its system and --aiayn-args) into WORK/quality.png",
    )
    args = p.parse_args(argv)
    if args.replot:
        replot([Path(f) for f in args.replot], Path(args.work))
        return
    data = Path(args.data) if args.data else find_data(None)
    if data is None or not (data / "meta.json").is_file():
        raise AiaynError(f"{args.data or 'data/bible'}: no prepared data folder; run `aiayn prepare bible` first")
    if args.minutes <= 0 and args.max_steps <= 0:
        raise AiaynError("give a budget: --minutes M and/or --max-steps N")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in ("aiayn", "marian"):
            raise AiaynError(f"--systems: unknown system '{s}' (aiayn, marian)")
    if args.eval_every < 1:
        raise AiaynError(f"--eval-every must be at least 1 (got {args.eval_every})")
    if args.seeds < 1 or args.first_seed < 0:
        raise AiaynError(
            f"--seeds must be at least 1 and --first-seed at least 0 (got {args.seeds}, {args.first_seed})"
        )
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = environment(torch.device("cpu"), args.threads)
    aiayn_precision = probe_precision(data, args.threads) if args.precision == "auto" else args.precision
    peer_precision = aiayn_precision if args.peer_precision == "auto" else args.peer_precision
    rows = []
    for system in systems:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if system == "aiayn":
                row = run_aiayn(
                    data,
                    work / f"aiayn-s{seed}",
                    args.minutes,
                    args.max_steps,
                    args.threads,
                    shlex.split(args.aiayn_args),
                    tune=not args.no_tune,
                    seed=seed,
                    precision=aiayn_precision,
                    nll_only=args.nll_only,
                    eval_every=args.eval_every,
                )
            else:
                row = run_marian(
                    data,
                    args.minutes,
                    args.max_steps,
                    args.threads,
                    seed=seed,
                    precision=peer_precision,
                    nll_only=args.nll_only,
                    eval_every=args.eval_every,
                )
            row = {"bench": "quality", "data": str(data), "minutes": args.minutes, **row, **env}
            print(json.dumps(row), flush=True)
            rows.append(row)
    for system in dict.fromkeys(r["system"] for r in rows):
        summary = summarize([r for r in rows if r["system"] == system])
        print(json.dumps({"bench": "quality-summary", "data": str(data), **summary, **env}), flush=True)
    budget = f"{args.minutes:g} minutes" if args.minutes else f"{args.max_steps} updates"
    title = f"{data.name}: {budget} each, {env['cpu']}, {args.threads} threads"
    plot(rows, work / "quality.png", title)
    print(f"\nquality: {title}; plot: {work / 'quality.png'}", file=sys.stderr)
    print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    run_main(main)

"""``aiayn complexity`` and ``aiayn sweep``: the paper's Table 1 and Table 3 measured on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path


def _complexity(args: argparse.Namespace) -> None:
    from aiayn.claims.complexity import parse_lengths, run_complexity

    run_complexity(
        Path(args.out),
        d_model=args.d_model,
        lengths=parse_lengths(args.lengths),
        batch=args.batch,
        repeats=args.repeats,
        warmup=args.warmup,
        heads=args.heads,
        kernel=args.kernel,
        probe_lengths=parse_lengths(args.probe_lengths, option="--probe-lengths", fewest=1),
    )
    print(f"aiayn: Table 1 measured into {args.out} (table1.md, table1.json, measurements.jsonl, complexity.png)")


def add_complexity(sub) -> None:
    p = sub.add_parser(
        "complexity",
        help="Table 1 measured: time, memory and path length of self-attention, recurrent and convolutional layers",
    )
    p.add_argument("--out", required=True, help="folder for table1.md, table1.json, measurements.jsonl, complexity.png")
    p.add_argument("--d-model", type=int, default=256, help="width d of every layer (default 256)")
    p.add_argument(
        "--lengths", default="16,32,64,128,256,512,1024", help="sequence lengths n, comma-separated (default 16…1024)"
    )
    p.add_argument("--batch", type=int, default=8, help="sequences per forward + backward (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point; the median is kept (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before them (default 2)")
    p.add_argument("--heads", type=int, default=4, help="attention heads, d_k = d_v = d / heads (default 4)")
    p.add_argument("--kernel", type=int, default=3, help="convolution kernel width k (default 3)")
    p.add_argument(
        "--probe-lengths", default="16,64,256", help="n of the path-length probe, comma-separated (default 16,64,256)"
    )
    p.set_defaults(func=_complexity)


def _sweep(args: argparse.Namespace) -> None:
    from aiayn.claims.sweep import run_sweep

    report = run_sweep(
        Path(args.data),
        Path(args.out),
        minutes=args.minutes,
        rows=args.rows,
        preset=args.preset,
        overrides=args.overrides,
    )
    print(f"aiayn: {len(report['rows'])} rows of Table 3 in {args.out} (table3.md, table3.json, table3.png)")


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="the paper's model variations (Table 3) trained at a small scale")
    p.set_defaults(func=lambda args: p.print_help())
    what = p.add_subparsers(dest="what", metavar="TABLE")
    t3 = what.add_parser(
        "table3",
        help="Table 3's rows A–E as variations of a preset, each trained for the same minutes",
        description="Each row is its own run folder OUT/<row>; finished rows are skipped, interrupted ones resumed.",
    )
    t3.add_argument("--data", required=True, help="a data folder made by `aiayn prepare` (its valid split is scored)")
    t3.add_argument("--minutes", type=float, required=True, help="training minutes per row")
    t3.add_argument("--out", required=True, help="folder for the row runs and table3.md, table3.json, table3.png")
    t3.add_argument("--rows", default="A,B,C,D,E", help="groups A–E and/or row names, e.g. A,C-N1 (base always runs)")
    t3.add_argument("--preset", default="small", help="the preset the rows vary (default small)")
    t3.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every row")
    t3.set_defaults(func=_sweep)

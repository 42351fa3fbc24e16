"""The ``aiayn`` command: one subcommand per stage of the data flow.

Each ``add_*`` function (in ``data``, ``training``, ``inference`` and ``claims``, in the order of
the data flow) declares one subcommand's arguments; its handler imports the module that does the work
only when it runs, so ``aiayn --help`` stays fast. User errors (``AiaynError``) print one line
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from aiayn import __version__
from aiayn.cli.claims import add_complexity, add_sweep
from aiayn.cli.data import add_data_stats, add_prepare
from aiayn.cli.inference import (
    add_attention,
    add_evaluate,
    add_export,
    add_plot,
    add_serve,
    add_showcase,
    add_translate,
)
from aiayn.cli.training import add_average, add_compare, add_model_info, add_train, add_tune_decoding
from aiayn.config import AiaynError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiayn",
        description="The Transformer of 'Attention Is All You Need': prepare data, train, translate, "
        "evaluate and look inside.",
    )
    parser.add_argument("--version", action="version", version=f"aiayn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        add_model_info,
        add_prepare,
        add_data_stats,
        add_train,
        add_average,
        add_tune_decoding,
        add_translate,
        add_evaluate,
        add_showcase,
        add_attention,
        add_plot,
        add_serve,
        add_export,
        add_compare,
        add_complexity,
        add_sweep,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand between options (`--preset small max_minutes=20 --out runs/x`).
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except AiaynError as e:
        print(f"aiayn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aiayn: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

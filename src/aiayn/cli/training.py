"""``aiayn model-info``, ``train``, ``average`` and ``tune-decoding``: the commands that make a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from aiayn.config import TUNE_ALPHAS, TUNE_BEAMS, TUNE_PENALTIES, TUNE_SENTENCES, AiaynError


def _model_info(args: argparse.Namespace) -> None:
    from aiayn.config import load_config
    from aiayn.models.build import build_model
    from aiayn.models.transformer import count_parameters

    cfg = load_config(args.preset, args.config, args.overrides)
    print(f"preset: {cfg.preset}")
    for section in ("model", "data", "train", "decode"):
        print(f"{section}:")
        for key, value in getattr(cfg, section).__dict__.items():
            print(f"  {key}: {value}")
    import torch

    with torch.device("meta"):
        model = build_model(cfg.model)
    n = count_parameters(model)
    print(f"parameters: {n:,} ({n / 1e6:.1f}M) with a shared vocabulary of {cfg.model.vocab_size:,}")


def add_model_info(sub) -> None:
    p = sub.add_parser("model-info", help="print a preset's resolved config and parameter count")
    p.add_argument("preset", help="tiny | small | base | big")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. d_model=256")
    p.add_argument("--config", help="YAML file applied after the preset")
    p.set_defaults(func=_model_info)


def _train(args: argparse.Namespace) -> None:
    from aiayn.training.train import train

    result = train(
        args.data, args.resume or args.out, args.preset, args.config, args.overrides, resume=args.resume is not None
    )
    if not result:  # a torchrun rank other than 0
        return
    summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
    print(f"aiayn: training finished: {summary}")


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with the paper's recipe (§5)",
        description="Train a Transformer. Also runs under torchrun for DistributedDataParallel: "
        "torchrun --nproc_per_node=N -m aiayn train ...",
    )
    p.add_argument("--data", help="a data folder made by `aiayn prepare`")
    p.add_argument("--out", help="the run folder to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest good checkpoint")
    p.add_argument("--preset", help="tiny | small | base | big (default base, or the config file's)")
    p.add_argument("--config", help="YAML file applied after the preset")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_minutes=20")
    p.set_defaults(func=_train)


def _average(args: argparse.Namespace) -> None:
    from aiayn.evaluation.tune import choose_average

    found = choose_average(
        Path(args.run_dir),
        args.last,
        data=args.data,
        sentences=args.sentences,
        compare=not args.no_compare,
        device=args.device,
    )
    steps = ", ".join(map(str, found["averaged_steps"]))
    if found["selected"] == "average":
        print(f"aiayn: averaged steps {steps} into {found['path']}")
    elif found["selected"] == "ema":
        print(
            f"aiayn: the moving average of the weights scored best on valid; {found['path']} holds it "
            f"(step {found['averaged_steps'][-1]})"
        )
    else:
        print(
            f"aiayn: the average of steps {steps} scored lower on valid than the last checkpoint; "
            f"{found['path']} holds the last checkpoint (step {found['averaged_steps'][-1]}) instead"
        )


def add_average(sub) -> None:
    p = sub.add_parser(
        "average",
        help="average the last checkpoints of a run (§6.1), kept only if it helps on valid",
        description="Average the last N step checkpoints into RUN_DIR/averaged.pt, which translate, "
        "evaluate and serve use. The average and the last checkpoint are both scored on the valid split "
        "with the task's metric (BLEU; WER for g2p; exact accuracy for copy/reverse/sort/add; the run's "
        "decoding settings) and averaged.pt holds the better one; the choice "
        "is printed and saved in the file.",
    )
    p.add_argument("run_dir")
    p.add_argument("--last", type=int, default=5, help="how many checkpoints (paper: 5 for base, 20 for big)")
    p.add_argument("--data", help="data folder for the valid split (default: the one the run trained on)")
    p.add_argument("--sentences", type=int, default=0, help="valid sentences to score (default 0: all)")
    p.add_argument("--no-compare", action="store_true", help="keep the average without scoring it")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_average)


def _tune_decoding(args: argparse.Namespace) -> None:
    from aiayn.evaluation.tune import tune_decoding
    from aiayn.runtime import reuse_freed_memory

    reuse_freed_memory()  # it decodes valid a dozen times (see aiayn.runtime)

    def numbers(text: str, kind, flag: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise AiaynError(f"{flag}: expected comma-separated numbers, got '{text}'") from None

    penalties = tuple(x.strip() for x in args.penalties.split(",") if x.strip())
    for name in penalties:
        if name not in ("gnmt", "fairseq", "none"):
            raise AiaynError(f"--penalties: unknown length penalty '{name}' (gnmt, fairseq, none)")
    tune_decoding(
        args.model,
        data=args.data,
        beams=numbers(args.beams, int, "--beams"),
        penalties=penalties,
        alphas=numbers(args.alphas, float, "--alphas"),
        sentences=args.sentences,
        device=args.device,
        write=not args.dry_run,
    )


def add_tune_decoding(sub) -> None:

    def csv(values) -> str:
        return ",".join(map(str, values))

    p = sub.add_parser(
        "tune-decoding",
        help="choose beam size and length penalty on the valid split (§6.1)",
        description="Translate the valid split with every beam size x length penalty x alpha of "
        "the grid, print BLEU, chrF and length ratio for each (WER and PER for g2p, exact accuracy for "
        "copy/reverse/sort/add), and store the best by the task's metric in "
        "RUN/decoding.json, which translate, evaluate and serve then use. Never uses test.",
    )
    p.add_argument("--model", required=True, help="a run folder or a checkpoint file")
    p.add_argument("--data", help="data folder for the valid split (default: the one the run trained on)")
    p.add_argument("--beams", default=csv(TUNE_BEAMS), help=f"beam sizes (default {csv(TUNE_BEAMS)})")
    p.add_argument(
        "--penalties",
        default=csv(TUNE_PENALTIES),
        help=f"gnmt ((5+|Y|)/6)^a, fairseq |Y|^a, none (default {csv(TUNE_PENALTIES)})",
    )
    p.add_argument("--alphas", default=csv(TUNE_ALPHAS), help=f"alpha values (default {csv(TUNE_ALPHAS)})")
    p.add_argument(
        "--sentences",
        type=int,
        default=TUNE_SENTENCES,
        help=f"valid sentences to translate (default {TUNE_SENTENCES}; 0: all)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the grid, write nothing")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_tune_decoding)


def _compare(args: argparse.Namespace) -> None:
    from aiayn.claims.compare import compare, parse_archs

    compare(
        args.data,
        args.minutes,
        args.out,
        archs=parse_archs(args.archs),
        preset=args.preset,
        overrides=args.overrides,
        sentences=args.sentences,
        device=args.device,
    )


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="Table 2: the Transformer, an LSTM and ConvS2S, each trained for the same minutes",
        description="Train each network (model.arch) for the same wall-clock budget, one after the other, "
        "each in OUT/<arch>/ (a finished one is not trained again, an interrupted one resumes), then "
        "average, tune-decoding on valid and evaluate on test, as a user would. Writes OUT/compare.json, "
        "OUT/compare.md (the table, also printed) and plots of valid BLEU against minutes and training "
        "FLOPs and of valid loss against target tokens seen.",
    )
    p.add_argument("--data", required=True, help="a data folder made by `aiayn prepare`")
    p.add_argument("--minutes", type=float, required=True, help="training budget of each network")
    p.add_argument("--out", required=True, help="the folder of the comparison (one run folder per network)")
    p.add_argument("--archs", default="transformer,rnn,conv", help="networks to compare (default all three)")
    p.add_argument("--preset", default="small", help="the preset, sizing all three (default small)")
    p.add_argument(
        "--sentences",
        type=int,
        default=TUNE_SENTENCES,
        help=f"valid sentences for averaging and tune-decoding (default {TUNE_SENTENCES}; 0: all)",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every network; ARCH:key=value for that network alone (conv:lr_scale=1.1)",
    )
    p.set_defaults(func=_compare)

"""The ``aiayn`` command: one subcommand per stage of the data flow.

Each ``_add_*`` function declares one subcommand's arguments; its handler is imported only
when it runs, so ``aiayn --help`` stays fast. User errors (``AiaynError``) print one line
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiayn import __version__
from aiayn.config import AiaynError


def _model_info(args: argparse.Namespace) -> None:
    from aiayn.config import load_config
    from aiayn.model import Transformer, count_parameters

    cfg = load_config(args.preset, args.config, args.overrides)
    print(f"preset: {cfg.preset}")
    for section in ("model", "data", "train", "decode"):
        print(f"{section}:")
        for key, value in getattr(cfg, section).__dict__.items():
            print(f"  {key}: {value}")
    import torch

    with torch.device("meta"):
        model = Transformer(cfg.model)
    n = count_parameters(model)
    print(f"parameters: {n:,} ({n / 1e6:.1f}M) with a shared vocabulary of {cfg.model.vocab_size:,}")


def _add_model_info(sub) -> None:
    p = sub.add_parser("model-info", help="print a preset's resolved config and parameter count")
    p.add_argument("preset", help="tiny | small | base | big")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. d_model=256")
    p.add_argument("--config", help="YAML file applied after the preset")
    p.set_defaults(func=_model_info)


def _data_stats(args: argparse.Namespace) -> None:
    from aiayn.batching import format_report, padding_report

    print(format_report(padding_report(args.data, args.batch_tokens, args.split)))


def _add_data_stats(sub) -> None:
    p = sub.add_parser("data-stats", help="tokenize a prepared split and report its batching and padding")
    p.add_argument("--data", required=True, help="data folder written by `aiayn prepare`")
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per side in one batch")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"))
    p.set_defaults(func=_data_stats)


def _train(args: argparse.Namespace) -> None:
    from aiayn.train import train

    result = train(
        args.data, args.resume or args.out, args.preset, args.config, args.overrides, resume=args.resume is not None
    )
    if not result:  # a torchrun rank other than 0
        return
    summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
    print(f"aiayn: training finished: {summary}")


def _add_train(sub) -> None:
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
    from aiayn.tune import choose_average

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
    else:
        print(
            f"aiayn: the average of steps {steps} scored lower on valid than the last checkpoint; "
            f"{found['path']} holds the last checkpoint (step {found['averaged_steps'][-1]}) instead"
        )


def _add_average(sub) -> None:
    p = sub.add_parser(
        "average",
        help="average the last checkpoints of a run (§6.1), kept only if it helps on valid",
        description="Average the last N step checkpoints into RUN_DIR/averaged.pt, which translate, "
        "evaluate and serve use. The average and the last checkpoint are both scored (BLEU on the "
        "valid split, the run's decoding settings) and averaged.pt holds the better one; the choice "
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
    from aiayn.tune import tune_decoding

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


def _add_tune_decoding(sub) -> None:
    from aiayn.tune import DEFAULT_ALPHAS, DEFAULT_BEAMS, DEFAULT_PENALTIES, DEFAULT_SENTENCES

    def csv(values) -> str:
        return ",".join(map(str, values))

    p = sub.add_parser(
        "tune-decoding",
        help="choose beam size and length penalty on the valid split (§6.1)",
        description="Translate the valid split with every beam size x length penalty x alpha of "
        "the grid, print BLEU, chrF and length ratio for each, and store the best in "
        "RUN/decoding.json, which translate, evaluate and serve then use. Never uses test.",
    )
    p.add_argument("--model", required=True, help="a run folder or a checkpoint file")
    p.add_argument("--data", help="data folder for the valid split (default: the one the run trained on)")
    p.add_argument("--beams", default=csv(DEFAULT_BEAMS), help=f"beam sizes (default {csv(DEFAULT_BEAMS)})")
    p.add_argument(
        "--penalties",
        default=csv(DEFAULT_PENALTIES),
        help=f"gnmt ((5+|Y|)/6)^a, fairseq |Y|^a, none (default {csv(DEFAULT_PENALTIES)})",
    )
    p.add_argument("--alphas", default=csv(DEFAULT_ALPHAS), help=f"alpha values (default {csv(DEFAULT_ALPHAS)})")
    p.add_argument(
        "--sentences",
        type=int,
        default=DEFAULT_SENTENCES,
        help=f"valid sentences to translate (default {DEFAULT_SENTENCES}; 0: all)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the grid, write nothing")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_tune_decoding)


def _translate(args: argparse.Namespace) -> None:
    from aiayn import translate

    translate.run(args)


def _add_decoding(p: argparse.ArgumentParser) -> None:
    """Options shared by translate and evaluate; None means the model's config (§6.1: beam 4, α 0.6)."""
    p.add_argument(
        "--model", required=True, help="a run folder (its averaged, best or latest checkpoint) or a checkpoint file"
    )
    p.add_argument("--beam", type=int, help="beam size (default: the config's, 4 as in the paper); 1 = greedy")
    p.add_argument("--alpha", type=float, help="length penalty α (default: the config's, 0.6 as in the paper)")
    p.add_argument(
        "--stop",
        choices=("bound", "finished"),
        help="when beam search ends a sentence: bound = once no live beam can still win (the default, "
        "tensor2tensor's rule); finished = once beam-size hypotheses have ended (fairseq's, CTranslate2's: faster)",
    )
    p.add_argument("--batch-tokens", type=int, help="padded source tokens per batch (default: data.batch_tokens)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    _add_quantize(p)


def _add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="int8 CPU inference: the linear layers' weights in int8, inputs quantized per call (default: float32)",
    )


def _add_translate(sub) -> None:
    p = sub.add_parser(
        "translate",
        help="translate text with a trained model (beam search, §6.1)",
        description="Translate one sentence per line, from --input or stdin, to --output or "
        "stdout, one output line per input line in input order. With --nbest N > 1 each "
        "input line gives N lines 'INDEX<TAB>SCORE<TAB>TEXT' (INDEX counts input lines "
        "from 0, best first; SCORE is the length-normalised log-probability). On a "
        "terminal without --input it prompts for sentences.",
    )
    _add_decoding(p)
    p.add_argument("--input", help="text file, one sentence per line (default: stdin)")
    p.add_argument("--output", help="file to write (default: stdout)")
    p.add_argument("--nbest", type=int, help="translations per line (default 1; at most the beam size)")
    p.add_argument("--sample", action="store_true", help="sample instead of beam search (--nbest N: N samples)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: all)")
    p.add_argument("--seed", type=int, help="seed for --sample, to repeat the same samples")
    p.add_argument(
        "--stream",
        action="store_true",
        help="translate stdin as lines arrive and flush each result at once (for pipes)",
    )
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="prompt for sentences (the default on a terminal; on a pipe the same as --stream)",
    )
    p.set_defaults(func=_translate)


def _evaluate(args: argparse.Namespace) -> None:
    from aiayn import evaluate

    evaluate.run(args)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="sacreBLEU and chrF of a model on a test set",
        description="Translate a test set and score the detokenized output against the raw "
        "references with sacreBLEU (BLEU and chrF, signatures printed).",
    )
    _add_decoding(p)
    p.add_argument("--data", help="a data folder made by `aiayn prepare` (use with --split)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="default test")
    p.add_argument("--src", help="source text file (instead of --data)")
    p.add_argument("--ref", help="reference translations, aligned with --src")
    p.add_argument("--hyp-out", help="write the translations to this file")
    p.add_argument("--out", help="folder for hyp.LANG and scores.json")
    p.set_defaults(func=_evaluate)


def _showcase(args: argparse.Namespace) -> None:
    from aiayn import evaluate

    evaluate.run_showcase(args)


def _add_showcase(sub) -> None:
    p = sub.add_parser(
        "showcase",
        help="translate a few famous verses side by side with the reference",
        description="Print source, translation and reference for well-known sentences: for the "
        "Bible, famous verses from the training split and from held-out chapters.",
    )
    _add_decoding(p)
    p.add_argument("--data", required=True, help="a data folder made by `aiayn prepare`")
    p.add_argument("--refs", help="comma-separated verse references, e.g. Gen.1.1,John.3.16")
    p.set_defaults(func=_showcase)


def _print_padding(out: Path, meta: dict | None) -> None:
    """The last line of ``aiayn prepare``'s report (``meta`` is what it wrote): how well the new
    folder batches."""
    from aiayn.batching import padding_report
    from aiayn.config import DataConfig

    if not meta:
        return
    report = padding_report(out, DataConfig.batch_tokens)
    print(f"  padding efficiency {report['padding_efficiency']:.3f} at {DataConfig.batch_tokens} tokens a batch")


def _prepare_bible(args: argparse.Namespace) -> None:
    from aiayn.bible import prepare_bible

    meta = prepare_bible(
        Path(args.out),
        None if args.sword_dir is None else Path(args.sword_dir),
        args.vocab_size,
        apt_update=args.apt_update,
    )
    _print_padding(Path(args.out), meta)


def _prepare_files(args: argparse.Namespace) -> None:
    from aiayn.corpus import prepare_files

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    meta = prepare_files(
        Path(args.out),
        src=path(args.src),
        tgt=path(args.tgt),
        tsv=path(args.tsv),
        src_lang=args.src_lang,
        tgt_lang=args.tgt_lang,
        valid=(path(args.valid_src), path(args.valid_tgt)),
        test=(path(args.test_src), path(args.test_tgt)),
        max_chars=args.max_chars,
        vocab_size=args.vocab_size,
        seed=args.seed,
    )
    _print_padding(Path(args.out), meta)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="build a data folder: aligned splits, joint tokenizer, meta.json")
    p.set_defaults(func=lambda args: p.print_help())
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    b = kinds.add_parser("bible", help="Spanish->English: Reina-Valera 1909 and World English Bible (SWORD)")
    b.add_argument("--out", default="data/bible", help="data folder to write (default: data/bible)")
    b.add_argument(
        "--sword-dir",
        help="a SWORD library (mods.d/, modules/); default: $SWORD_PATH, ~/.sword, "
        "/usr/share/sword, else the Debian packages are downloaded into ~/.cache/aiayn/sword",
    )
    b.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary (default 8000)")
    b.add_argument(
        "--apt-update",
        action="store_true",
        help="when the packages cannot be downloaded because "
        "apt's package lists are missing, run `apt-get update` (as root) instead of stopping",
    )
    b.set_defaults(func=_prepare_bible)
    f = kinds.add_parser("files", help="any parallel corpus: two line-aligned files or one TSV")
    f.add_argument("--src", help="source-language text, one sentence a line (e.g. train.de)")
    f.add_argument("--tgt", help="target-language text, line-aligned with --src (e.g. train.en)")
    f.add_argument("--tsv", help="instead of --src/--tgt: rows of src<TAB>tgt or ref<TAB>src<TAB>tgt")
    f.add_argument("--src-lang", help="source language code (default: the --src file suffix)")
    f.add_argument("--tgt-lang", help="target language code (default: the --tgt file suffix)")
    for split in ("valid", "test"):
        f.add_argument(f"--{split}-src", help=f"{split} source file (default: held out from the corpus)")
        f.add_argument(f"--{split}-tgt", help=f"{split} target file, line-aligned with --{split}-src")
    f.add_argument("--out", default="data/corpus", help="data folder to write (default: data/corpus)")
    f.add_argument("--max-chars", type=int, default=1000, help="drop pairs with a longer side (default 1000)")
    f.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary (default 8000)")
    f.add_argument("--seed", type=int, default=1, help="seed of the valid/test hold-out (default 1)")
    f.set_defaults(func=_prepare_files)


def _attention(args: argparse.Namespace) -> None:
    from aiayn.visualize import run_attention

    run_attention(args)


def _add_attention(sub) -> None:
    p = sub.add_parser(
        "attention",
        help="draw a sentence's attention: every layer and head, and the paper's Figure 3-5 view",
        description="Translate SENTENCE, run the model once teacher-forced on (sentence, "
        "translation) and draw encoder self-, decoder self- and encoder-decoder attention for "
        "every layer and head (heatmap grids), plus one layer as lines between two columns of "
        "tokens (Figures 3-5 of the paper). Writes PNG and SVG files and prints their paths.",
    )
    p.add_argument("sentence", help="the source sentence")
    p.add_argument("--model", required=True, help="a run folder or a checkpoint file")
    p.add_argument("--out", default="attention", help="folder for the figures (default: ./attention)")
    p.add_argument("--layer", type=int, help="layer of the lines view, from 1 (default: the last)")
    p.add_argument(
        "--kind",
        default="encoder",
        choices=("encoder", "decoder", "cross"),
        help="attention drawn in the lines view (default encoder)",
    )
    p.add_argument("--beam", type=int, help="beam size of the translation (default: the config's, 4)")
    p.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    p.set_defaults(func=_attention)


def _plot(args: argparse.Namespace) -> None:
    from aiayn.visualize import run_plot

    run_plot(args)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="plot positional encodings, the Eq. 3 schedule, or a run's training curves")
    p.set_defaults(func=lambda args: p.print_help())
    what = p.add_subparsers(dest="what", metavar="WHAT")
    pos = what.add_parser("positions", help="the sinusoidal positional encoding (§3.5) as a heatmap")
    pos.add_argument("--d-model", type=int, default=512, help="dimensions (default 512)")
    pos.add_argument("--max-len", type=int, default=100, help="positions (default 100)")
    sched = what.add_parser("schedule", help="the learning rate of Eq. 3 against the step, warmup marked")
    sched.add_argument("--preset", help="tiny | small | base | big (default base, or the config file's)")
    sched.add_argument("--config", help="YAML file applied after the preset")
    sched.add_argument("--steps", type=int, help="last step drawn (default: train.max_steps)")
    sched.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. warmup_steps=400")
    run = what.add_parser("run", help="training curves of a run folder (metrics.csv) as a 2x2 panel")
    run.add_argument("run_dir")
    for q in (pos, sched, run):
        q.add_argument(
            "--out", help="a .png or .svg file, or a folder for both (default: the current folder; for `run`, RUN_DIR)"
        )
        q.set_defaults(func=_plot)


def _export(args: argparse.Namespace) -> None:
    from aiayn.export import run

    run(args)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a model for CTranslate2 or Hugging Face Transformers, tokenizer included",
        description="Export a trained model to a new folder: --to ctranslate2 (ctranslate2.Translator "
        "loads it; the SentencePiece model beside it) or --to huggingface (MarianMTModel and "
        "MarianTokenizer load it). Both compute aiayn's function; README.md in the folder says where "
        "the runtime decodes differently. A setting the target cannot express is refused and nothing "
        "is written. Needs the ctranslate2 or transformers package (pip install 'aiayn[export]').",
    )
    p.add_argument("--model", required=True, help="a run folder or a checkpoint file")
    p.add_argument("--to", required=True, metavar="TARGET", help="ctranslate2 | huggingface")
    p.add_argument("--out", required=True, help="the folder to create (must not exist)")
    p.add_argument(
        "--quantization",
        help="ctranslate2 only: store the weights as int8, int8_float32, int8_float16, "
        "int8_bfloat16, int16, float16, bfloat16 or float32 (default: float32)",
    )
    p.set_defaults(func=_export)


def _serve(args: argparse.Namespace) -> None:
    from aiayn.serve import run

    run(args)


def _add_serve(sub) -> None:
    from aiayn.serve_limits import QUEUE, WORKERS

    p = sub.add_parser(
        "serve",
        help="HTTP service: /translate, /attention, /health and the explorer page at /",
        description="Serve a model over HTTP (standard library only): POST /translate, "
        "POST /attention, GET /health, and at / a page to explore attention interactively.",
    )
    p.add_argument("--model", required=True, help="a run folder or a checkpoint file")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; there is no authentication)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="also accept pages and requests from ORIGIN (scheme://host[:port], e.g. a name this "
        "machine is reached by); repeatable. Other hosts and origins get 403 (DNS rebinding)",
    )
    p.add_argument("--workers", type=int, default=WORKERS, help=f"threads answering requests (default {WORKERS})")
    p.add_argument(
        "--queue",
        type=int,
        default=QUEUE,
        help=f"connections waiting for a worker before new ones get 503 (default {QUEUE})",
    )
    _add_quantize(p)
    p.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiayn",
        description="The Transformer of 'Attention Is All You Need': prepare data, train, translate, "
        "evaluate and look inside.",
    )
    parser.add_argument("--version", action="version", version=f"aiayn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_model_info,
        _add_prepare,
        _add_data_stats,
        _add_train,
        _add_average,
        _add_tune_decoding,
        _add_translate,
        _add_evaluate,
        _add_showcase,
        _add_attention,
        _add_plot,
        _add_serve,
        _add_export,
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

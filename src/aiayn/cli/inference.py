"""``aiayn translate``, ``evaluate``, ``showcase``, ``attention``, ``plot``, ``export`` and ``serve``:
the commands that use a trained model."""

from __future__ import annotations

import argparse


def _inference_process() -> None:
    """What every command that decodes sets up for its process (aiayn.runtime.reuse_freed_memory)."""
    from aiayn.runtime import reuse_freed_memory

    reuse_freed_memory()


def _translate(args: argparse.Namespace) -> None:
    from aiayn.inference import translate

    _inference_process()
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


def add_translate(sub) -> None:
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
    from aiayn.evaluation import evaluate

    _inference_process()
    evaluate.run(args)


def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a test set with its task's metric (BLEU/chrF, WER/PER, exact accuracy)",
        description="Translate a test set and score the output as the data folder's task asks: "
        "translation against the raw references with sacreBLEU (BLEU and chrF, signatures printed); "
        "g2p by word and phoneme error rate (any of a word's pronunciations counts); copy, reverse, "
        "sort and add by exact-sequence accuracy.",
    )
    _add_decoding(p)
    p.add_argument("--data", help="a data folder made by `aiayn prepare` (use with --split)")
    p.add_argument(
        "--split", default="test", help="train, valid, test (default) or another split of the folder, e.g. test_long"
    )
    p.add_argument("--src", help="source text file (instead of --data)")
    p.add_argument("--ref", help="reference translations, aligned with --src")
    p.add_argument("--hyp-out", help="write the translations to this file")
    p.add_argument("--out", help="folder for hyp.LANG and scores.json")
    p.set_defaults(func=_evaluate)


def _showcase(args: argparse.Namespace) -> None:
    from aiayn.evaluation import evaluate

    _inference_process()
    evaluate.run_showcase(args)


def add_showcase(sub) -> None:
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


def _attention(args: argparse.Namespace) -> None:
    from aiayn.evaluation.visualize import run_attention

    run_attention(args)


def add_attention(sub) -> None:
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
    from aiayn.evaluation.plots import run_plot

    run_plot(args)


def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="plot positional encodings, the Eq. 3 schedule, or a run's training curves")
    p.set_defaults(func=lambda args: p.print_help())
    what = p.add_subparsers(dest="what", metavar="WHAT")
    pos = what.add_parser("positions", help="the sinusoidal positional encoding (§3.5) as a heatmap")
    pos.add_argument("--d-model", type=int, default=512, help="dimensions (default 512)")
    pos.add_argument("--max-len", type=int, default=100, help="positions (default 100)")
    sched = what.add_parser(
        "schedule", help="the learning rate (Eq. 3, or the preset's budgeted schedule) against the step, warmup marked"
    )
    sched.add_argument("--preset", help="tiny | small | base | big (default base, or the config file's)")
    sched.add_argument("--config", help="YAML file applied after the preset")
    sched.add_argument(
        "--steps", type=int, help="last step drawn, and a budgeted schedule's budget (default: train.max_steps)"
    )
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


def add_export(sub) -> None:
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
    from aiayn.serve.app import run

    _inference_process()
    run(args)


def add_serve(sub) -> None:
    from aiayn.serve.limits import DECODE_SECONDS, QUEUE, WORKERS

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
    p.add_argument(
        "--workers", type=int, default=WORKERS, help=f"threads answering /translate and /attention (default {WORKERS})"
    )
    p.add_argument(
        "--queue",
        type=int,
        default=QUEUE,
        help=f"whole requests waiting for a worker before new ones get 503 (default {QUEUE})",
    )
    p.add_argument(
        "--decode-seconds",
        type=float,
        default=DECODE_SECONDS,
        help=f"a request's time limit, from its arrival to its last decoding step (default {DECODE_SECONDS:g})",
    )
    _add_quantize(p)
    p.set_defaults(func=_serve)

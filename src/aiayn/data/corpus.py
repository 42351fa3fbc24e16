"""Any parallel corpus into a prepared data folder: validation, NFC, splits, tokenizer, metadata.

``aiayn prepare files`` reads two line-aligned files (``train.de`` + ``train.en``) or one TSV
(``src<TAB>tgt`` or ``ref<TAB>src<TAB>tgt``). Bad input stops with one line naming the file and
line; pairs that are empty or over-long are dropped and counted, never silently. The folder it
writes (see docs/architecture.md) is what every later stage reads:

    {train,valid,test}.{src_lang} / .{tgt_lang}   one sentence a line, NFC, single spaces
    {split}.tsv                                   ref, src, tgt (when the corpus has references)
    spm.model, spm.vocab                          the joint SentencePiece model (tokenizer.py), or
    vocab.json                                    a char or symbol vocabulary (symbols.py)
    {split}.refs.json                             every reference of each line (when a line has several)
    meta.json                                     task, tokenizer, languages, counts, drops, vocabulary, special ids

``meta.json``'s ``task`` (``TASKS``) says how `aiayn evaluate` scores the folder and ``tokenizer``
which kind it holds; a folder without them (written before they existed) is ``translation`` with
``sentencepiece``. Splits beyond train/valid/test (``test_long`` of ``aiayn prepare synthetic``)
are listed in ``counts``.

``meta.json`` is written last, so a folder with one is complete.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, AiaynError
from aiayn.data.symbols import TOKENIZERS, VOCAB_FILE, SymbolTokenizer, encode_targets
from aiayn.data.text import Pair, normalize, read_lines, read_parallel, read_tsv
from aiayn.data.tokenizer import MODEL_NAME, VOCAB_NAME, Tokenizer

SPLITS = ("train", "valid", "test")
# translation: BLEU and chrF; g2p: word and phoneme error rates; the algorithmic tasks
# (aiayn.data.synthetic): exact-sequence accuracy. evaluation/metrics.py scores each.
TASKS = ("translation", "g2p", "copy", "reverse", "sort", "add")
REFS_SUFFIX = ".refs.json"
META_NAME = "meta.json"
HOLDOUT_MAX, HOLDOUT_FRACTION = 1000, 0.05


def clean_pairs(pairs: list[Pair], max_chars: int, drops: Counter) -> list[Pair]:
    """Normalise both sides; drop (and count in ``drops``) empty and over-long pairs."""
    kept = []
    for ref, src, tgt in pairs:
        src, tgt = normalize(src), normalize(tgt)
        if not src or not tgt:
            drops["empty"] += 1
        elif len(src) > max_chars or len(tgt) > max_chars:
            drops["too_long"] += 1
        else:
            kept.append((normalize(ref), src, tgt))
    return kept


def holdout(pairs: list[Pair], n: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """``n`` pairs chosen by a seeded shuffle, and the rest in their original order."""
    chosen = set(random.Random(seed).sample(range(len(pairs)), n))
    return [p for i, p in enumerate(pairs) if i in chosen], [p for i, p in enumerate(pairs) if i not in chosen]


def holdout_size(n_pairs: int) -> int:
    """About 1,000 or 5 %, whichever is smaller, and at least one."""
    return max(1, min(HOLDOUT_MAX, round(HOLDOUT_FRACTION * n_pairs)))


def write_split(out: Path, split: str, pairs: list[Pair], src_lang: str, tgt_lang: str) -> None:
    for lang, column in ((src_lang, 1), (tgt_lang, 2)):
        (out / f"{split}.{lang}").write_text("".join(p[column] + "\n" for p in pairs), encoding="utf-8")
    if any(p[0] for p in pairs):
        (out / f"{split}.tsv").write_text("".join("\t".join(p) + "\n" for p in pairs), encoding="utf-8")


def write_data(
    out: Path,
    splits: dict[str, list[Pair]],
    *,
    source: str,
    src_lang: str,
    tgt_lang: str,
    pairs_read: int,
    dropped: dict[str, int],
    vocab_size: int,
    extra: dict | None = None,
    task: str = "translation",
    tokenizer: str = "sentencepiece",
    units: tuple[str, str] | None = None,
    references: dict[str, list[list[str]]] | None = None,
) -> dict:
    """Write the splits (train, valid, test and any others), build the tokenizer on the training
    text, write ``meta.json``, report. ``tokenizer``: ``sentencepiece`` (joint BPE of
    ``vocab_size``), ``char`` or ``symbols`` (symbols.py; ``units`` = how the source and target
    split, default both as the tokenizer's name says). ``references``: for a split whose lines
    have several correct targets, every one of them per line (``{split}.refs.json``)."""
    if task not in TASKS:
        raise AiaynError(f"unknown task '{task}' (choose from {', '.join(TASKS)})")
    if tokenizer not in TOKENIZERS:
        raise AiaynError(f"unknown tokenizer '{tokenizer}': data.tokenizer is one of {', '.join(TOKENIZERS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_NAME).unlink(missing_ok=True)  # the folder is incomplete until the new one exists
    for name in (MODEL_NAME, VOCAB_NAME, VOCAB_FILE, *(p.name for p in out.glob(f"*{REFS_SUFFIX}"))):
        (out / name).unlink(missing_ok=True)  # a folder holds one tokenizer, and only this run's references
    for split, pairs in splits.items():
        (out / f"{split}.tsv").unlink(missing_ok=True)
        write_split(out, split, pairs, src_lang, tgt_lang)
    for split, refs in (references or {}).items():
        if len(refs) != len(splits[split]):
            raise AiaynError(f"{split}: {len(refs)} reference lists for {len(splits[split])} lines")
        (out / f"{split}{REFS_SUFFIX}").write_text(json.dumps(refs, ensure_ascii=False) + "\n", encoding="utf-8")
    unknown = {}
    if tokenizer == "sentencepiece":
        tok = Tokenizer.train(
            files=[out / f"train.{src_lang}", out / f"train.{tgt_lang}"], out_dir=out, vocab_size=vocab_size
        )
    else:
        src_unit, tgt_unit = units or (tokenizer, tokenizer)
        train = splits["train"]
        tok = SymbolTokenizer.build(
            {"source": [p[1] for p in train], "target": [p[2] for p in train]}, source=src_unit, target=tgt_unit
        )
        tok.save(out)
        for split, pairs in splits.items():  # held-out symbols the training text never shows
            tok.encode_batch([p[1] for p in pairs])
            encode_targets(tok, [p[2] for p in pairs])
            if tok.unknown:
                unknown[split] = sum(tok.unknown.values())
                tok.unknown.clear()
    meta = {
        "source": source,
        "task": task,
        "tokenizer": tokenizer if tokenizer == "sentencepiece" else tok.kind,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "pairs_read": pairs_read,
        "counts": {split: len(pairs) for split, pairs in splits.items()},
        "dropped": dict(dropped),
        "vocab_size": tok.vocab_size,
        "special_ids": {"PAD": PAD_ID, "UNK": UNK_ID, "BOS": BOS_ID, "EOS": EOS_ID},
        **({"units": {"source": tok.source, "target": tok.target}} if isinstance(tok, SymbolTokenizer) else {}),
        **({"unknown_symbols": unknown} if unknown else {}),
        **(extra or {}),
    }
    (out / META_NAME).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_report(out, meta)
    return meta


def print_report(out: Path, meta: dict) -> None:
    print(f"{meta['source']} ({meta['src_lang']}->{meta['tgt_lang']}) in {out}")
    print(f"  pairs read     {meta['pairs_read']:,}")
    for reason, n in meta["dropped"].items():
        print(f"  dropped        {n:,} ({reason})")
    for split, n in meta["counts"].items():
        print(f"  {split:<14} {n:,} pairs")
    kind = {"sentencepiece": "joint SentencePiece BPE", "char": "characters"}.get(meta["tokenizer"], "symbols")
    print(f"  task           {meta['task']}")
    print(f"  vocabulary     {meta['vocab_size']:,} ({kind}, special ids included)")
    for split, n in meta.get("unknown_symbols", {}).items():
        print(f"  unknown        {n:,} symbol(s) of {split} not in train's vocabulary (read as UNK)")


def _lang_from_name(path: Path) -> str | None:
    """``train.de`` -> ``de``; None when the suffix does not look like a language code."""
    suffix = path.suffix.lstrip(".")
    looks_like_code = re.fullmatch(r"[a-z]{2,3}([_-][A-Za-z]{2,4})?", suffix) and suffix not in ("txt", "tsv")
    return suffix if looks_like_code else None


def _languages(first: Path, second: Path | None, src_lang: str | None, tgt_lang: str | None) -> tuple[str, str]:
    """Flags win; else the suffixes of two files, or a TSV name like ``corpus.de-en.tsv``."""
    if second is None:
        pair = re.search(r"([a-z]{2,3})-([a-z]{2,3})\.tsv$", first.name)
        guess = (pair.group(1), pair.group(2)) if pair else (None, None)
    else:
        guess = (_lang_from_name(first), _lang_from_name(second))
    src_lang, tgt_lang = src_lang or guess[0], tgt_lang or guess[1]
    if not src_lang or not tgt_lang:
        raise AiaynError(f"{first}: cannot tell the languages from the file names; give --src-lang and --tgt-lang")
    for lang in (src_lang, tgt_lang):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", lang):
            raise AiaynError(f"language code '{lang}' is not usable as a file suffix; use letters like 'de'")
    if src_lang == tgt_lang:
        raise AiaynError(f"source and target language are both '{src_lang}'; give --src-lang and --tgt-lang")
    return src_lang, tgt_lang


def _read_corpus(src: Path | None, tgt: Path | None, tsv: Path | None) -> tuple[list[Pair], Path, Path | None]:
    if tsv is not None and src is None and tgt is None:
        return read_tsv(tsv), tsv, None
    if tsv is None and src is not None and tgt is not None:
        return read_parallel(src, tgt), src, tgt
    raise AiaynError("give either --src FILE --tgt FILE or --tsv FILE")


def _read_given(files: tuple[Path | None, Path | None], name: str) -> list[Pair] | None:
    if (files[0] is None) != (files[1] is None):
        raise AiaynError(f"--{name}-src and --{name}-tgt go together; give both or neither")
    return None if files[0] is None or files[1] is None else read_parallel(files[0], files[1])


def prepare_files(
    out: Path,
    *,
    src: Path | None = None,
    tgt: Path | None = None,
    tsv: Path | None = None,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    valid: tuple[Path | None, Path | None] = (None, None),
    test: tuple[Path | None, Path | None] = (None, None),
    max_chars: int = 1000,
    vocab_size: int = 8000,
    seed: int = 1,
    tokenizer: str = "sentencepiece",
) -> dict:
    """``aiayn prepare files``: validate, clean, split (seeded hold-out unless given) and write ``out``
    with a ``tokenizer`` (``sentencepiece``, ``char`` or ``symbols``: symbols.py)."""
    if tokenizer not in TOKENIZERS:
        raise AiaynError(f"unknown tokenizer '{tokenizer}': --tokenizer is one of {', '.join(TOKENIZERS)}")
    if max_chars <= 0:
        raise AiaynError(f"--max-chars must be positive, got {max_chars}")
    pairs, first, second = _read_corpus(src, tgt, tsv)
    src_lang, tgt_lang = _languages(first, second, src_lang, tgt_lang)
    given = {"valid": _read_given(valid, "valid"), "test": _read_given(test, "test")}
    if not pairs:
        raise AiaynError(f"{first}: empty corpus; it has no lines")
    drops: Counter = Counter()
    train = clean_pairs(pairs, max_chars, drops)
    if not train:
        raise AiaynError(
            f"{first}: no usable pairs ({drops['empty']} empty, {drops['too_long']} longer than "
            f"--max-chars {max_chars})"
        )
    splits = {name: clean_pairs(p, max_chars, drops) for name, p in given.items() if p is not None}
    for name, pairs_given in splits.items():
        if not pairs_given:
            raise AiaynError(f"the {name} files have no usable pairs (all empty or longer than --max-chars)")
    # Every pair of the corpus trains once the user gives a valid split: a missing test split
    # stays empty then. Without one, valid and test are held out, and the report says so.
    wanted = ("valid", "test") if "valid" not in splits else ()
    n_hold, corpus_size, held = holdout_size(len(train)), len(train), {}
    for offset, name in enumerate(("valid", "test")):
        if name in wanted and name not in splits:
            if len(train) <= n_hold:
                raise AiaynError(
                    f"{first}: only {len(train)} usable pairs, too few to hold out a {name} split; "
                    f"give --{name}-src and --{name}-tgt"
                )
            splits[name], train = holdout(train, n_hold, seed + offset)
            held[name] = n_hold
        splits.setdefault(name, [])
    if held:
        took = " and ".join(f"{n:,} for {name}" for name, n in held.items())
        print(
            f"aiayn: held out {took} of the {corpus_size:,} usable pairs; give --valid-src/--valid-tgt "
            f"(and --test-src/--test-tgt) to train on every pair"
        )
    splits["train"] = train
    pairs_read = len(pairs) + sum(len(p) for p in given.values() if p is not None)
    inputs = [str(p) for p in (tsv, src, tgt, *valid, *test) if p is not None]
    return write_data(
        Path(out),
        splits,
        source="files",
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        pairs_read=pairs_read,
        dropped={k: drops[k] for k in ("empty", "too_long")},
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        extra={"inputs": inputs, "seed": seed, "max_chars": max_chars, "held_out_of_corpus": held},
    )


def load_meta(data_dir: Path) -> dict:
    """``meta.json`` of a prepared data folder, or a one-line error saying how to make one."""
    path = Path(data_dir) / META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AiaynError(
            f"{data_dir}: not a prepared data folder (no {META_NAME}); "
            "create it with `aiayn prepare bible` or `aiayn prepare files`"
        ) from None
    except json.JSONDecodeError:
        raise AiaynError(f"{path}: not valid JSON; run `aiayn prepare` again") from None
    missing = [k for k in ("src_lang", "tgt_lang", "counts", "vocab_size") if k not in meta]
    if missing:
        raise AiaynError(f"{path}: incomplete (missing {', '.join(missing)}); run `aiayn prepare` again")
    meta.setdefault("task", "translation")
    meta.setdefault("tokenizer", "sentencepiece")
    if meta["task"] not in TASKS:
        raise AiaynError(
            f"{path}: unknown task '{meta['task']}' (aiayn knows {', '.join(TASKS)}); run `aiayn prepare` again"
        )
    if meta["tokenizer"] not in TOKENIZERS:
        raise AiaynError(
            f"{path}: unknown tokenizer '{meta['tokenizer']}' (aiayn knows {', '.join(TOKENIZERS)}); "
            "run `aiayn prepare` again"
        )
    return meta


def read_split(data_dir: Path, split: str) -> tuple[list[str], list[str]]:
    """Source and target lines of one split of a prepared data folder (train, valid, test, or
    another the folder lists in ``meta.json``'s ``counts``, such as ``test_long``)."""
    meta = load_meta(data_dir)
    known = list(dict.fromkeys([*SPLITS, *meta["counts"]]))
    if split not in known:
        raise AiaynError(f"{data_dir}: unknown split '{split}' (this folder has {', '.join(known)})")
    src, tgt = (read_lines(Path(data_dir) / f"{split}.{meta[k]}") for k in ("src_lang", "tgt_lang"))
    if len(src) != len(tgt):
        raise AiaynError(
            f"{data_dir}: {split}.{meta['src_lang']} and {split}.{meta['tgt_lang']} differ in "
            "length; run `aiayn prepare` again"
        )
    return src, tgt


def read_references(data_dir: Path, split: str) -> list[list[str]]:
    """Every correct target of each line of ``split``: ``{split}.refs.json`` where the folder has
    one (a CMUdict word's pronunciations), else the target line alone."""
    _, targets = read_split(data_dir, split)
    path = Path(data_dir) / f"{split}{REFS_SUFFIX}"
    if not path.is_file():
        return [[t] for t in targets]
    try:
        refs = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise AiaynError(f"{path}: not valid JSON; run `aiayn prepare` again") from None
    if (
        not isinstance(refs, list)
        or len(refs) != len(targets)
        or not all(isinstance(r, list) and r and all(isinstance(x, str) for x in r) for r in refs)
    ):
        raise AiaynError(
            f"{path}: expected one non-empty list of references for each of the {len(targets)} lines; "
            "run `aiayn prepare` again"
        )
    return refs

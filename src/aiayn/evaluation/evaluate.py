"""Each task's metric of a model's outputs: sacreBLEU and chrF for translation, with the
signatures that make them comparable; word and phoneme error rates for grapheme-to-phoneme
conversion; exact-sequence accuracy for the algorithmic tasks (``corpus.TASKS``).

Scores are computed by sacreBLEU's own tokenizer on *detokenized* hypotheses against the raw
reference text (docs/pitfalls.md: "BLEU on text"): BLEU over SentencePiece pieces or a private tokenization is not
comparable across papers or toolkits. The data folder's ``meta.json`` names the task; a line
may have several correct outputs (a word's pronunciations, ``corpus.read_references``).

    aiayn evaluate --model runs/demo --data data/bible --split test --out runs/demo/eval
    aiayn evaluate --model runs/demo --src test.es --ref test.en --hyp-out hyp.en
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from aiayn.config import AiaynError
from aiayn.data.corpus import load_meta, read_references, read_split
from aiayn.data.text import read_lines
from aiayn.inference.translate import Translator


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacreBLEU defaults: 13a tokenization, exp smoothing; chrF2)."""
    if len(hypotheses) != len(references):
        raise AiaynError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": b.score,
        "chrf": c.score,
        "bleu_detail": str(b),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
    }


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def g2p_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Word and phoneme error rates of pronunciations (phonemes separated by spaces), in percent.

    A word is right when its output equals *any* of its references. Its phoneme errors are the
    edit distance to the closest reference (the first listed among equals), and PER = the sum of
    those distances / the sum of those references' lengths. This is the convention of Bisani &
    Ney (2008), "Joint-sequence models for grapheme-to-phoneme conversion", Speech Communication
    50(5), whose Sequitur Yolchuyeva et al. (2019, "Transformer based grapheme-to-phoneme
    conversion", Interspeech) compare with: on CMUdict about 22 % WER / 5.2 % PER for their
    Transformer and 24.5 % / 5.9 % for Sequitur (their split, not aiayn's).
    """
    _check_aligned(hypotheses, references)
    wrong = errors = length = 0
    for hyp, refs in zip(hypotheses, references):
        h = hyp.split()
        found = [(edit_distance(h, r.split()), len(r.split())) for r in refs]
        distance, n = min(found, key=lambda x: x[0])
        wrong += distance > 0
        errors, length = errors + distance, length + n
    return {
        "wer": 100 * wrong / len(hypotheses),
        "per": 100 * errors / max(length, 1),
        "words": len(hypotheses),
        "words_wrong": wrong,
        "phoneme_errors": errors,
        "reference_phonemes": length,
    }


def exact_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Exact-sequence accuracy in percent: an output counts only when it equals a reference whole."""
    _check_aligned(hypotheses, references)
    right = sum(h in refs for h, refs in zip(hypotheses, references))
    return {"accuracy": 100 * right / len(hypotheses), "sequences": len(hypotheses), "sequences_right": right}


# The number each task is judged by, and whether higher is better: what tune-decoding chooses by.
PRIMARY = {"translation": ("bleu", True), "g2p": ("wer", False)}
EXACT_TASKS = ("copy", "reverse", "sort", "add")


def primary_metric(task: str) -> tuple[str, bool]:
    return PRIMARY.get(task, ("accuracy", True))


def task_scores(task: str, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The task's scores: BLEU and chrF (against each line's first reference), WER and PER, or
    exact-sequence accuracy."""
    if task == "translation":
        return corpus_scores(hypotheses, [refs[0] for refs in references])
    if task == "g2p":
        return g2p_scores(hypotheses, references)
    if task in EXACT_TASKS:
        return exact_scores(hypotheses, references)
    raise AiaynError(f"unknown task '{task}' (choose from translation, g2p, {', '.join(EXACT_TASKS)})")


def _check_aligned(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise AiaynError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise AiaynError("nothing to score: no hypotheses")


def evaluate(
    translator: Any,
    sources: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    progress: bool = True,
    *,
    task: str = "translation",
    **options: Any,
) -> tuple[list[str], dict[str, Any]]:
    """Translate ``sources`` (options as ``Translator.translate``) and score them as ``task``
    asks; ``references`` holds one text per line, or a list of every correct text per line."""
    if len(sources) != len(references):
        raise AiaynError(f"{len(sources)} source lines but {len(references)} references; they must be aligned")
    if not sources:
        raise AiaynError("nothing to evaluate: the source text is empty")
    start = time.perf_counter()
    hypotheses = [nbest[0].text for nbest in translator.translate(sources, progress=progress, **options)]
    seconds = time.perf_counter() - start
    if hasattr(translator.tokenizer, "report_unknown"):
        translator.tokenizer.report_unknown("input")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    scores = {"task": task, **task_scores(task, hypotheses, refs)}
    scores.update(seconds=round(seconds, 3), sentences_per_second=round(len(sources) / max(seconds, 1e-9), 2))
    return hypotheses, scores


def model_bleu(
    model: Any, tokenizer: Any, config: Any, sources: Sequence[str], references: Sequence[str], *, beam_size: int
) -> float:
    """BLEU of ``model`` as it is now (training's validation), decoded with ``beam_size`` on the
    model's device."""
    translator = Translator(model, tokenizer, config)
    return evaluate(translator, sources, references, progress=False, beam_size=beam_size)[1]["bleu"]


def format_scores(scores: dict[str, Any]) -> str:
    speed = f"in {scores['seconds']:.1f} s ({scores['sentences_per_second']:.1f} sentences/s)"
    if scores.get("task") == "g2p":
        return (
            f"WER = {scores['wer']:.2f} % ({scores['words_wrong']:,} of {scores['words']:,} words wrong: "
            f"no reference pronunciation matched)\n"
            f"PER = {scores['per']:.2f} % ({scores['phoneme_errors']:,} edits over {scores['reference_phonemes']:,} "
            f"phonemes of the closest references)\n{scores['words']:,} words {speed}"
        )
    if scores.get("task") in EXACT_TASKS:
        return (
            f"exact-sequence accuracy = {scores['accuracy']:.2f} % ({scores['sequences_right']:,} of "
            f"{scores['sequences']:,} outputs equal the answer)\n{scores['sequences']:,} sequences {speed}"
        )
    return (
        f"{scores['bleu_detail']}\n  signature: {scores['bleu_signature']}\n"
        f"chrF2 = {scores['chrf']:.2f}\n  signature: {scores['chrf_signature']}\n"
        f"{scores['sentences']} sentences in {scores['seconds']:.1f} s "
        f"({scores['sentences_per_second']:.1f} sentences/s)"
    )


def run_task(model: str | Path) -> str:
    """The task of the data a run was trained on (RUN/data_meta.json), ``translation`` if unknown."""
    path = Path(model) if Path(model).is_dir() else Path(model).parent
    for folder in (path, path.parent):
        if (folder / "data_meta.json").is_file():
            return json.loads((folder / "data_meta.json").read_text(encoding="utf-8")).get("task", "translation")
    return "translation"


def _read_inputs(args: Any) -> tuple[list[str], list[list[str]], str, str]:
    """(sources, references, what, task) from --src/--ref or --data/--split."""
    if args.data:
        if args.src or args.ref:
            raise AiaynError("give either --data (with --split) or --src and --ref, not both")
        sources, _ = read_split(Path(args.data), args.split)
        if not sources:
            raise AiaynError(
                f"{args.data}: the {args.split} split is empty (no {args.split} files were given to "
                f"`aiayn prepare files`); use another --split, or --src and --ref"
            )
        meta = load_meta(Path(args.data))
        return sources, read_references(Path(args.data), args.split), meta["tgt_lang"], meta["task"]
    if not (args.src and args.ref):
        raise AiaynError("give --src and --ref (aligned text files), or --data DIR --split test")
    sources, references = read_lines(Path(args.src)), read_lines(Path(args.ref))
    if len(sources) != len(references):
        raise AiaynError(
            f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}; "
            "they must be aligned line by line"
        )
    refs = [[r] for r in references]
    return sources, refs, Path(args.ref).suffix.lstrip(".") or "txt", run_task(args.model)


def run(args: Any) -> None:
    """``aiayn evaluate``: translate, score as the data's task asks, print the scores, write
    hypotheses and scores.json."""
    sources, references, tgt_lang, task = _read_inputs(args)
    translator = Translator.load(args.model, args.device, quantize=args.quantize)
    hypotheses, scores = evaluate(
        translator,
        sources,
        references,
        task=task,
        beam_size=args.beam,
        alpha=args.alpha,
        stop=args.stop,
        batch_tokens=args.batch_tokens,
    )
    d = translator.config.decode
    scores.update(
        model=str(args.model),
        split=args.split if args.data else None,
        beam_size=args.beam or d.beam_size,
        alpha=d.alpha if args.alpha is None else args.alpha,
        length_penalty=d.length_penalty,
        stop=args.stop or d.stop,
        quantize=args.quantize,
    )
    baseline = recorded_copy_baseline(args.data, args.split)
    if baseline:
        scores["copy_baseline"] = baseline
    text = "".join(h + "\n" for h in hypotheses)
    if args.hyp_out:
        Path(args.hyp_out).write_text(text, encoding="utf-8")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"hyp.{tgt_lang}").write_text(text, encoding="utf-8")
        (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"aiayn: wrote {out / f'hyp.{tgt_lang}'} and {out / 'scores.json'}", file=sys.stderr)
    print(format_scores(scores))
    if baseline:
        print(format_copy_baseline(baseline, scores))


# Famous verses: the first four sit in the training split of the Bible corpus, the last four
# in held-out chapters, so the showcase shows both recall and generalisation.
FAMOUS = ("Gen.1.1", "Ps.23.1", "John.3.16", "Matt.5.9", "John.15.13", "Prov.3.5", "Eph.4.32", "Rom.10.9")


def showcase_examples(data_dir: Path, refs: Sequence[str] = FAMOUS, fallback: int = 5) -> list[dict[str, str]]:
    """Examples to show side by side: the named verse references found in the data folder's
    ``{split}.tsv`` files, or else the first lines of its test split."""
    found: dict[str, dict[str, str]] = {}
    for split in ("train", "valid", "test"):
        path = Path(data_dir) / f"{split}.tsv"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            ref, src, tgt = (line.split("\t") + ["", ""])[:3]
            if ref in refs:
                found[ref] = {"ref": ref, "split": split, "src": src, "tgt": tgt}
    if found:
        return [found[r] for r in refs if r in found]
    sources, targets = read_split(data_dir, "test")
    return [
        {"ref": f"test line {i + 1}", "split": "test", "src": s, "tgt": t}
        for i, (s, t) in enumerate(zip(sources[:fallback], targets[:fallback]))
    ]


def run_showcase(args: Any) -> None:
    """``aiayn showcase``: translate a few well-known sentences and print them beside the reference."""
    meta = load_meta(Path(args.data))
    refs = tuple(args.refs.split(",")) if args.refs else FAMOUS
    examples = showcase_examples(Path(args.data), refs)
    translator = Translator.load(args.model, args.device, quantize=args.quantize)
    outputs = translator.translate(
        [e["src"] for e in examples],
        beam_size=args.beam,
        alpha=args.alpha,
        stop=args.stop,
        batch_tokens=args.batch_tokens,
        progress=False,
    )
    width = max(len(meta["src_lang"]), len("aiayn"), len("ref"))
    for example, nbest in zip(examples, outputs):
        seen = "seen in training" if example["split"] == "train" else f"held out ({example['split']} split)"
        print(f"{example['ref']}  [{seen}]")
        print(f"  {meta['src_lang']:<{width}}  {example['src']}")
        print(f"  {'aiayn':<{width}}  {nbest[0].text}")
        print(f"  {'ref':<{width}}  {example['tgt']}\n")


# The copy baseline: where source and target share a language (data/kjv_web.py), `aiayn prepare`
# records per split the scores of the source copied unchanged, the floor a model has to beat.
def recorded_copy_baseline(data_dir: Path | None, split: str) -> dict[str, Any] | None:
    """The copy baseline ``meta.json`` of ``data_dir`` records for ``split``, else None."""
    return load_meta(Path(data_dir)).get("copy_baseline", {}).get(split) if data_dir else None


def format_copy_baseline(baseline: dict[str, Any], scores: dict[str, Any]) -> str:
    """The copy baseline and the model's margin over it, one line."""
    line = (
        f"copy baseline (source unchanged): BLEU {baseline['bleu']:.2f}, chrF2 {baseline['chrf']:.2f}; "
        f"the model {scores['bleu'] - baseline['bleu']:+.2f} BLEU, {scores['chrf'] - baseline['chrf']:+.2f} chrF2"
    )
    if (baseline["bleu_signature"], baseline["chrf_signature"]) != (scores["bleu_signature"], scores["chrf_signature"]):
        line += f" (recorded with another signature: {baseline['bleu_signature']}; run `aiayn prepare` again)"
    return line

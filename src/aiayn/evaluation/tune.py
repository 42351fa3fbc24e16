"""Choices made on the validation split, never on test: whether averaging helps, and how to decode.

§6.1: "We used beam search with a beam size of 4 and length penalty α = 0.6. These
hyperparameters were chosen after experimentation on the development set." aiayn does the
same for every run it trains, because the best settings move with the corpus and the budget:

    aiayn average RUN --last 5      averaged.pt = the average, or the last checkpoint if that
                                    scores higher on valid (the choice is printed and saved)
    aiayn tune-decoding --model RUN sweeps beam size × length penalty on valid, prints the
                                    grid and what the faster stopping rule would cost, and
                                    writes RUN/decoding.json, which translate, evaluate and
                                    serve then use
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU
from tqdm import tqdm

from aiayn.config import TUNE_ALPHAS, TUNE_BEAMS, TUNE_PENALTIES, TUNE_SENTENCES, AiaynError
from aiayn.data.corpus import load_meta, read_references, read_split
from aiayn.evaluation.evaluate import primary_metric, task_scores
from aiayn.inference.search import STOPS
from aiayn.inference.translate import Translator
from aiayn.training import checkpoint as ckpt
from aiayn.training.checkpoint import DECODING_FILE, resolve_model_path, run_folder


def valid_split(data_dir: Path, sentences: int) -> tuple[list[str], list[list[str]]]:
    """The first ``sentences`` lines of the valid split (0: all of them) and every reference of each."""
    src, _ = read_split(Path(data_dir), "valid")
    if not src:
        raise AiaynError(f"{data_dir}: the valid split is empty; choices are made on valid, never on test")
    ref = read_references(Path(data_dir), "valid")
    return (src[:sentences], ref[:sentences]) if sentences else (src, ref)


def run_data_dir(run_dir: Path, data: str | Path | None) -> Path:
    """``--data``, else the data folder the run was trained on (RUN/run.json)."""
    if data is not None:
        return Path(data)
    info = Path(run_dir) / "run.json"
    if not info.is_file():
        raise AiaynError(f"{run_dir}: no run.json naming the training data; give --data DIR")
    return Path(json.loads(info.read_text())["data_dir"])


def length_ratio(hypotheses: list[str], references: list[str]) -> float:
    """Hypothesis length / reference length in sacreBLEU's 13a tokens (BLEU's brevity inputs)."""
    stats = BLEU().corpus_score(hypotheses, [references])
    return stats.sys_len / max(stats.ref_len, 1)


def score(
    translator: Any, sources: list[str], references: list[list[str]], *, task: str = "translation", **options: Any
) -> dict[str, float]:
    """The task's scores on valid: BLEU, chrF and the length ratio; WER and PER; or accuracy."""
    hyps = [n[0].text for n in translator.translate(sources, progress=False, **options)]
    found = task_scores(task, hyps, references)
    if task != "translation":
        return {k: round(found[k], 2) for k in ("wer", "per", "accuracy") if k in found}
    first = [r[0] for r in references]
    return {
        "bleu": round(found["bleu"], 2),
        "chrf": round(found["chrf"], 2),
        "length_ratio": round(length_ratio(hyps, first), 3),
    }


def better(task: str, a: float, b: float) -> bool:
    """Whether score ``a`` beats ``b`` on ``task``'s own metric (lower WER, higher BLEU or accuracy)."""
    return a > b if primary_metric(task)[1] else a < b


# ---------------------------------------------------------------------------- averaging


def choose_average(
    run_dir: Path,
    last: int,
    *,
    data: str | Path | None = None,
    sentences: int = 0,
    compare: bool = True,
    device: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Average the last ``last`` checkpoints; keep the average only where it beats the last
    checkpoint in valid BLEU (the run's decoding settings; the task's own metric for other tasks).
    A run trained with ``train.ema_decay`` offers its moving average of the weights (the last
    checkpoint's) as a third candidate. Writes RUN/averaged.pt either way: the winner's weights,
    with ``selected`` saying which it is."""
    run_dir = Path(run_dir)
    paths = ckpt.list_checkpoints(run_dir)
    if not paths:
        raise AiaynError(f"{run_dir}: no checkpoints to average (expected {ckpt.checkpoint_dir(run_dir)}/step_*.pt)")
    if last < 1:
        raise AiaynError(f"--last must be at least 1, got {last}")
    states = [ckpt.load_checkpoint(p) for p in paths[-last:]]
    averaged = ckpt.average_state_dicts([s["model"] for s in states])
    steps = [int(s["step"]) for s in states]
    candidates = {"average": averaged, "last": states[-1]["model"]}
    if "ema" in states[-1]:
        candidates["ema"] = states[-1]["ema"]
    result: dict[str, Any] = {"averaged_steps": steps, "selected": "average"}
    if compare and (len(states) > 1 or "ema" in candidates):
        data_dir = run_data_dir(run_dir, data)
        task, src, ref = load_meta(data_dir)["task"], *valid_split(data_dir, sentences)
        metric = primary_metric(task)[0]
        scores = {}
        whats = {
            "average": "average of steps " + ", ".join(map(str, steps)),
            "last": "last checkpoint",
            "ema": f"moving average of the weights at step {steps[-1]}",
        }
        for name, weights in candidates.items():
            if name == "average" and len(states) == 1:
                continue  # the average of one checkpoint is that checkpoint
            what = whats[name]
            translator = Translator.from_state(weights, states[-1]["config"], run_dir, device)
            scores[name] = score(translator, src, ref, task=task)
            ratio = f" (length ratio {scores[name]['length_ratio']:.3f})" if "length_ratio" in scores[name] else ""
            log(f"aiayn: valid {metric.upper()} {scores[name][metric]:.2f}{ratio} with the {what}")
        result.update(valid=scores, valid_sentences=len(src))
        best = next(iter(scores))  # the average where there is one: it wins ties
        for name in scores:
            if better(task, scores[name][metric], scores[best][metric]):
                best = name
        result["selected"] = best
    weights = candidates[result["selected"]]
    out = run_dir / "averaged.pt"
    ckpt.save_checkpoint(
        out,
        {
            "model": weights,
            "config": states[-1]["config"],
            "step": steps[-1],
            "averaged_steps": steps if result["selected"] == "average" else [steps[-1]],
            "selection": json.dumps(result),
        },
    )
    result["path"] = str(out)
    return result


# ---------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Setting:
    beam_size: int
    length_penalty: str
    alpha: float


def grid(beams: tuple[int, ...], penalties: tuple[str, ...], alphas: tuple[float, ...]) -> list[Setting]:
    """Every beam × penalty × α. Greedy search (beam 1) and ``none`` ignore α, so they appear once."""
    out = []
    for beam in beams:
        for penalty in ("none",) if beam == 1 else penalties:
            for alpha in (0.0,) if penalty == "none" else alphas:
                out.append(Setting(beam, penalty, alpha))
    return list(dict.fromkeys(out))


def tune_decoding(
    model: str | Path,
    *,
    data: str | Path | None = None,
    beams=TUNE_BEAMS,
    penalties=TUNE_PENALTIES,
    alphas=TUNE_ALPHAS,
    sentences: int = TUNE_SENTENCES,
    device: str | None = None,
    write: bool = True,
    log=print,
) -> dict[str, Any]:
    """Sweep the grid on valid; the best score of the data's task wins (BLEU, the lowest WER for
    g2p, exact accuracy for the algorithmic tasks; ties: the smaller beam, then the paper's
    settings). With ``write``, RUN/decoding.json stores it for translate/evaluate/serve."""
    for beam in beams:
        if beam < 1:
            raise AiaynError(f"--beams: a beam size must be positive, got {beam}")
    if any(a < 0 for a in alphas):
        raise AiaynError("--alphas: α cannot be negative")
    model_path = resolve_model_path(Path(model))
    run_dir = Path(model) if Path(model).is_dir() else run_folder(model_path)  # where translate looks
    translator = Translator.load(model, device, use_tuned=False)
    data_dir = run_data_dir(run_dir, data)
    task, src, ref = load_meta(data_dir)["task"], *valid_split(data_dir, sentences)
    metric, higher = primary_metric(task)
    rows = []
    for s in tqdm(
        grid(tuple(beams), tuple(penalties), tuple(alphas)),
        desc="tune decoding",
        unit="setting",
        file=sys.stderr,
        dynamic_ncols=True,
    ):
        rows.append(
            {
                **vars(s),
                **score(
                    translator,
                    src,
                    ref,
                    task=task,
                    beam_size=s.beam_size,
                    alpha=s.alpha,
                    length_penalty=s.length_penalty,
                ),
            }
        )
    paper = Setting(4, "gnmt", 0.6)
    best = max(
        rows,
        key=lambda r: (
            r[metric] if higher else -r[metric],
            -r["beam_size"],
            Setting(r["beam_size"], r["length_penalty"], r["alpha"]) == paper,
        ),
    )
    log(format_grid(rows, best, task))
    stops = None
    if best["beam_size"] > 1:
        stops = compare_stops(
            translator,
            src,
            ref,
            task=task,
            beam_size=best["beam_size"],
            alpha=best["alpha"],
            length_penalty=best["length_penalty"],
        )
        log(format_stops(stops, metric))
    result = {
        "beam_size": best["beam_size"],
        "length_penalty": best["length_penalty"],
        "alpha": best["alpha"],
        **({"valid_bleu": best["bleu"]} if task == "translation" else {}),
        "task": task,
        "metric": metric,
        "valid_score": best[metric],
        "valid_sentences": len(src),
        "model": str(model_path),
        "grid": rows,
        "stops": stops,
    }
    if write:
        (run_dir / DECODING_FILE).write_text(json.dumps(result, indent=2) + "\n")
        log(
            f"aiayn: wrote {run_dir / DECODING_FILE}; translate, evaluate and serve now decode with beam "
            f"{best['beam_size']}, {best['length_penalty']} length penalty α = {best['alpha']}"
        )
    return result


def compare_stops(translator: Any, sources: list[str], references: list[list[str]], **setting: Any) -> dict[str, dict]:
    """The chosen beam setting under each stopping rule (``search.STOPS``), timed on valid: what
    ``stop=finished`` (fairseq's and CTranslate2's rule) gives up for its speed on this run."""
    found = {}
    for stop in STOPS:
        start = time.perf_counter()
        found[stop] = score(translator, sources, references, stop=stop, **setting)
        found[stop]["seconds"] = round(time.perf_counter() - start, 2)
    return found


def format_stops(stops: dict[str, dict], metric: str = "bleu") -> str:
    bound, finished, name = stops["bound"], stops["finished"], metric.upper()
    return (
        f"stopping rule at this setting: bound (the default) {name} {bound[metric]:.2f} in {bound['seconds']:.1f} s, "
        f"finished {name} {finished[metric]:.2f} ({finished[metric] - bound[metric]:+.2f}) in "
        f"{finished['seconds']:.1f} s ({bound['seconds'] / max(finished['seconds'], 1e-9):.1f}× faster); "
        f"--stop finished or decode.stop=finished trades one for the other"
    )


def format_grid(rows: list[dict[str, Any]], best: dict[str, Any], task: str = "translation") -> str:
    columns = {"translation": ("bleu", "chrf", "length_ratio"), "g2p": ("wer", "per")}.get(task, ("accuracy",))
    names = {"bleu": "BLEU", "chrf": "chrF", "length_ratio": "len ratio", "wer": "WER %", "per": "PER %"}
    lines = [f"{'beam':>4}  {'penalty':<8} {'alpha':>5}" + "".join(f"  {names.get(c, c):>9}" for c in columns)]
    for r in rows:
        mark = "  <- best" if r is best else ""
        values = "".join(f"  {r[c]:>9.3f}" if c == "length_ratio" else f"  {r[c]:>9.2f}" for c in columns)
        lines.append(f"{r['beam_size']:>4}  {r['length_penalty']:<8} {r['alpha']:>5.2f}{values}{mark}")
    return "\n".join(lines)

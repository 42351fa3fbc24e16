"""Table 2's claim on this machine: the Transformer against the recurrent and convolutional
baselines (``model.arch=rnn | conv``), each trained for the same wall-clock budget on the same data.

    aiayn compare --data data/bible --minutes 30 --out runs/compare

Each network in turn, in its own run folder ``OUT/<arch>/``: ``train`` for ``--minutes``, then as a
user would finish it: ``average`` (kept only if it beats the last checkpoint on valid),
``tune-decoding`` on valid, ``evaluate`` on test. ``OUT/<arch>/result.json`` marks a finished
network, which is not run again; an interrupted one resumes from its newest checkpoint. Then
``OUT/compare.json``, the table (printed and ``OUT/compare.md``) and three plots.

What the table measures, per network:
- parameters: distinct weights, tied matrices once (``count_parameters``);
- updates: optimizer steps inside the budget;
- target tokens/s: the median of metrics.csv's ``tokens_per_s`` (the rate between two log lines);
- training FLOPs: ``torch.utils.flop_counter.FlopCounterMode``'s count of the forward and
  backward pass of the run's first training batch, per target token, × the target tokens seen
  (updates × the mean target tokens of an update over one epoch of the run's batches). An LSTM
  fed whole sequences runs in oneDNN's kernel, which the counter does not know: ``LSTM_FLOPS``
  counts it as its matrix products, 2 · 4H(I + H) per position forward and twice that backward;
- valid perplexity: of the last weights, at the end of training (metrics.csv's final row);
- test BLEU and chrF: sacreBLEU of the kept model (average or last) with the tuned decoding.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.flop_counter import FlopCounterMode

from aiayn.config import TUNE_SENTENCES, AiaynError, Config, load_config
from aiayn.data.batching import BatchStream, tokenized_split
from aiayn.data.corpus import read_split
from aiayn.data.tokenizer import Tokenizer
from aiayn.evaluation.evaluate import evaluate
from aiayn.evaluation.plots import read_metrics, save_figure
from aiayn.evaluation.tune import choose_average, tune_decoding
from aiayn.inference.translate import Translator
from aiayn.models.build import ARCHS, build_model
from aiayn.models.transformer import count_parameters
from aiayn.runtime import machine
from aiayn.training import checkpoint as ckpt
from aiayn.training.loss import label_smoothed_cross_entropy
from aiayn.training.train import train

RESULT_FILE = "result.json"  # OUT/<arch>/result.json: that network is finished


def _lstm_layer_flops(input_shape, weight_ih_shape, weight_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """One LSTM layer over a whole sequence: 4H gates from I inputs and H states per position."""
    positions = input_shape[0] * input_shape[1]
    return 2 * positions * weight_ih_shape[0] * (weight_ih_shape[1] + weight_hh_shape[1])


def _lstm_layer_backward_flops(input_shape, weight_ih_shape, weight_hh_shape, *args, **kwargs) -> int:
    """Gradients of the inputs and of the weights: two products of the forward's size."""
    return 2 * _lstm_layer_flops(input_shape, weight_ih_shape, weight_hh_shape)


aten = torch.ops.aten
LSTM_FLOPS = (
    {aten.mkldnn_rnn_layer: _lstm_layer_flops, aten.mkldnn_rnn_layer_backward: _lstm_layer_backward_flops}
    if hasattr(aten, "mkldnn_rnn_layer")
    else {}
)


def parse_archs(text: str) -> list[str]:
    """``--archs transformer,rnn`` -> the names, checked, in the order given."""
    archs = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown or not archs:
        raise AiaynError(
            f"--archs: unknown network '{unknown[0] if unknown else text}' (choose from {', '.join(ARCHS)})"
        )
    return list(dict.fromkeys(archs))


def network_overrides(overrides: Sequence[str], archs: Sequence[str]) -> dict[str, list[str]]:
    """Each network's overrides, in the order given: ``key=value`` for every network, and
    ``ARCH:key=value`` for that one alone (a network's own learning rate: ``conv:lr_scale=1.1``)."""
    own: dict[str, list[str]] = {arch: [] for arch in archs}
    for item in overrides:
        head, _, rest = item.partition("=")
        name, colon, key = head.partition(":")
        if not colon:
            for items in own.values():
                items.append(item)
            continue
        name = name.strip()
        if name not in ARCHS:
            raise AiaynError(f"override '{item}': '{name}' is no network (choose from {', '.join(ARCHS)})")
        if name not in own:
            raise AiaynError(f"override '{item}': {name} is not compared here; add it to --archs or drop the override")
        own[name].append(f"{key}={rest}")
    return own


def new_run_overrides(arch: str, minutes: float, overrides: Sequence[str]) -> list[str]:
    """What a network's new run is trained with: its overrides, then its arch and the budget."""
    return [*overrides, f"model.arch={arch}", f"train.max_minutes={minutes}"]


def train_network(data: Path, run: Path, arch: str, minutes: float, preset: str, overrides: Sequence[str]) -> None:
    """Train ``arch`` for ``minutes`` into ``run``, or resume it from its newest checkpoint."""
    if ckpt.list_checkpoints(run):
        train(data, run, overrides=[f"train.max_minutes={minutes}"], resume=True)
    else:
        train(data, run, preset, overrides=new_run_overrides(arch, minutes, overrides))


def tokens_and_flops(cfg: Config, data: Path, tokenizer: Tokenizer) -> tuple[float, float]:
    """(mean target tokens of an update, training FLOPs per target token), both from the run's
    own batches: the FLOPs of the forward and backward pass of its first batch (module doc)."""
    _, _, src, tgt = tokenized_split(data, "train", tokenizer)
    stream = BatchStream(
        src, tgt, cfg.data.batch_tokens, cfg.data.max_len, cfg.train.seed, sort=cfg.data.sort, limit=cfg.data.limit
    )
    accumulate = max(1, math.ceil(cfg.train.update_tokens / cfg.data.batch_tokens))
    per_update = sum(len(tgt[i]) + 1 for i in stream.kept) / len(stream) * accumulate  # + EOS
    batch = next(iter(stream))[2]
    model = build_model(cfg.model).train()
    with FlopCounterMode(display=False, custom_mapping=LSTM_FLOPS) as counter:
        logits = model(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_mask)  # (n, V)
        label_smoothed_cross_entropy(logits, batch.tgt_out[batch.tgt_mask], cfg.train.label_smoothing)[0].backward()
    return per_update, counter.get_total_flops() / batch.n_tgt_tokens


def finish_network(
    run: Path, data: Path, arch: str, sentences: int, device: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """average, tune-decoding, evaluate on test, and the measurements of the module doc."""
    loaded = ckpt.load_for_inference(run, use_tuned=False)
    cfg = loaded.config
    average = choose_average(run, cfg.train.keep_last, data=data, sentences=sentences, device=device, log=log)
    tuned = tune_decoding(run, data=data, sentences=sentences, device=device, log=log)
    src, ref = read_split(data, "test")
    _, scores = evaluate(Translator.load(run, device), src, ref)
    metrics = read_metrics(run)
    per_update, flops_per_token = tokens_and_flops(cfg, data, loaded.tokenizer)
    updates = int(np.nanmax(metrics["step"]))
    rates = [r for r in metrics["tokens_per_s"] if not math.isnan(r)]
    ppl = metrics["valid_ppl"][~np.isnan(metrics["valid_ppl"])]
    return {
        "arch": arch,
        "parameters": count_parameters(loaded.model),
        "updates": updates,
        "minutes": float(np.nanmax(metrics["minutes"])),
        "target_tokens_per_s": statistics.median(rates) if rates else math.nan,
        "target_tokens_per_update": per_update,
        "flops_per_target_token": flops_per_token,
        "training_flops": flops_per_token * per_update * updates,
        "valid_ppl": float(ppl[-1]) if ppl.size else math.nan,
        "averaged": average["selected"] == "average",
        "decoding": {k: tuned[k] for k in ("beam_size", "length_penalty", "alpha")},
        "test_bleu": scores["bleu"],
        "test_chrf": scores["chrf"],
        "bleu_signature": scores["bleu_signature"],
    }


def compare(
    data: str | Path,
    minutes: float,
    out: str | Path,
    *,
    archs: Sequence[str] = tuple(ARCHS),
    preset: str = "small",
    overrides: Sequence[str] = (),
    sentences: int = TUNE_SENTENCES,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``aiayn compare``: every network of ``archs`` trained and finished (module doc), then the
    table and the plots. Returns what OUT/compare.json holds."""
    data, out = Path(data), Path(out)
    if not (data / "spm.model").is_file():
        raise AiaynError(f"{data}: not a prepared data folder (no spm.model); run `aiayn prepare` first")
    if not minutes > 0:
        raise AiaynError(f"--minutes must be positive, got {minutes:g}")
    own = network_overrides(overrides, archs)
    for arch in archs:  # each new run's config checked before the first network trains, not at its turn
        if not (out / arch / RESULT_FILE).is_file() and not ckpt.list_checkpoints(out / arch):
            try:
                load_config(preset, overrides=new_run_overrides(arch, minutes, own[arch]))
            except AiaynError as e:
                raise AiaynError(f"compare: {arch}: {e}") from None
    results = {}
    for arch in archs:
        run = out / arch
        done = run / RESULT_FILE
        if done.is_file():
            log(f"aiayn: compare: {arch} is finished ({done}); not trained again")
        else:
            log(f"aiayn: compare: {arch}, {minutes:g} minutes in {run}")
            train_network(data, run, arch, minutes, preset, own[arch])
            done.write_text(json.dumps(finish_network(run, data, arch, sentences, device, log), indent=2) + "\n")
        results[arch] = json.loads(done.read_text())
    summary = {
        "data": str(data.resolve()),
        "budget_minutes": minutes,
        "preset": preset,
        "overrides": list(overrides),
        "machine": machine(),
        "networks": results,
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(results, minutes, summary["machine"])
    (out / "compare.md").write_text(text + "\n")
    log(text)
    for stem, fig in figures(out, results).items():
        save_figure(fig, out, stem)
    return summary


def table(results: dict[str, dict[str, Any]], minutes: float, where: dict[str, Any]) -> str:
    """The comparison as a Markdown table, one row per network, under the machine ``where`` it ran on."""
    lines = [
        f"Each network trained for {minutes:g} minutes on {where['cpu']} ({where['cores']} cores), torch "
        f"{where['torch']}, then averaged, tuned on valid, scored on test.",
        "",
        "| network | parameters | updates | target tokens/s | training FLOPs | valid ppl | test BLEU | test chrF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, r in results.items():
        lines.append(
            f"| {arch} | {r['parameters'] / 1e6:.2f} M | {r['updates']:,} | {r['target_tokens_per_s']:,.0f} "
            f"| {r['training_flops']:.2e} | {r['valid_ppl']:.2f} | {r['test_bleu']:.1f} | {r['test_chrf']:.1f} |"
        )
    return "\n".join(lines)


def figures(out: Path, results: dict[str, dict[str, Any]]) -> dict[str, Figure]:
    """Valid BLEU (greedy, on the evaluation subset) against minutes and against training FLOPs,
    and valid loss against target tokens seen, one line per network, from each metrics.csv."""
    curves = {
        "compare_bleu_minutes": ("minutes", "valid_bleu", "minutes of training", "valid BLEU (greedy)"),
        "compare_bleu_flops": ("flops", "valid_bleu", "training FLOPs", "valid BLEU (greedy)"),
        "compare_loss_tokens": ("tokens", "valid_loss", "target tokens seen", "valid loss (label-smoothed)"),
    }
    found = {}
    for stem, (x_key, y_key, x_label, y_label) in curves.items():
        fig = Figure(figsize=(7.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for arch, r in results.items():
            m = read_metrics(out / arch)
            x = {
                "minutes": m["minutes"],
                "flops": m["step"] * r["target_tokens_per_update"] * r["flops_per_target_token"],
                "tokens": m["step"] * r["target_tokens_per_update"],
            }[x_key]
            keep = ~np.isnan(m[y_key])
            ax.plot(x[keep], m[y_key][keep], marker="o", ms=4, label=f"{arch} ({r['parameters'] / 1e6:.1f} M)")
        if x_key != "minutes":
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        fig.suptitle(f"{y_label} against {x_label}", fontsize=12)
        found[stem] = fig
    return found

"""Training throughput: aiayn's training step against a reference built from torch.nn.Transformer.

    python -m bench.train [--presets small,base] [--reps 5] [--device cuda] [--compile] [--profile]

aiayn runs ``TrainingStep.update`` as ``build_training_step`` makes it for ``aiayn train``: the
forward under the precision ``choose_precision`` picks, ``label_smoothed_cross_entropy``, backward, the gradient norm,
Adam with the rate of Eq. 3. The reference is what a user of ``torch.nn.Transformer`` writes
for the same network (same dims, one tied embedding × √d_model plus sinusoids, the tied output
projection, the same loss, Adam and batches), in fp32 as its users run it and, when aiayn picks
bf16, also under aiayn's precision, so the gain from precision and from the implementation
show separately. Two kinds of batches: the Bible's token-bucketed training batches
(``BatchStream``; synthetic lengths when no prepared folder exists) and fixed 128 × 32 batches.
"""

from __future__ import annotations

import argparse
import gc
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.config import Config, ModelConfig
from aiayn.data.batching import Batch, BatchStream, collate
from aiayn.runtime import Runtime
from aiayn.training.kernel_caches import bound_kernel_caches
from aiayn.training.loss import label_smoothed_cross_entropy
from aiayn.training.schedule import InverseSqrtSchedule
from aiayn.training.step import build_training_step
from bench.common import (
    PeakMemory,
    Reporter,
    find_data,
    matmul_peak,
    parser,
    preset_config,
    presets,
    profile_top,
    rate_stats,
    repeat,
    run_main,
    setup,
)

FIXED_ROWS, FIXED_LEN = 128, 32
# Bucketed batches per timed pass (--batches N overrides): base's fp32 reference steps take ~8 s
# on 2 CPU threads, so base gets 2 to keep `make bench` well within 20 minutes.
BUCKETED_BATCHES = {"tiny": 1, "small": 3, "base": 2}


# ---------------------------------------------------------------------------- the reference


def sinusoids(max_len: int, d_model: int) -> Tensor:
    """§3.5's table, written the way a tutorial does: (max_len, D), sin on even, cos on odd dims."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table


class NNTransformerReference(nn.Module):
    """The paper's model as a user of ``torch.nn.Transformer`` builds it (batch-first, post-norm,
    ReLU). nn.Transformer adds a final LayerNorm to the encoder and to the decoder; it is kept,
    as its users keep it (2 × D × tokens FLOPs, negligible)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embedding.weight, std=cfg.d_model**-0.5)
        self.register_buffer("positions", sinusoids(cfg.max_len, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = math.sqrt(cfg.d_model)
        with warnings.catch_warnings():  # nested-tensor notice: irrelevant in training mode
            warnings.simplefilter("ignore")
            self.transformer = nn.Transformer(
                cfg.d_model,
                cfg.n_heads,
                cfg.n_layers,
                cfg.decoder_layers,
                cfg.d_ff,
                cfg.dropout,
                activation="relu",
                batch_first=True,
                norm_first=False,
            )

    def embed(self, ids: Tensor) -> Tensor:
        return self.dropout(self.embedding(ids) * self.scale + self.positions[: ids.size(1)])  # (B, L, D)

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor, tgt_mask: Tensor) -> Tensor:
        t = tgt_in.size(1)
        # bool like the padding masks (True = masked): mixing a float causal mask with bool
        # padding masks takes a deprecated, slower path in nn.MultiheadAttention.
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).triu(1)
        x = self.transformer(
            self.embed(src),
            self.embed(tgt_in),
            tgt_mask=causal,
            src_key_padding_mask=~src_mask,
            tgt_key_padding_mask=~tgt_mask,
            memory_key_padding_mask=~src_mask,
            tgt_is_causal=True,
        )
        return F.linear(x, self.embedding.weight)  # (B, T, V)


# ---------------------------------------------------------------------------- the two steps


def reference_step(
    cfg: Config, device: torch.device, autocast: torch.dtype | None, compile: bool
) -> tuple[nn.Module, Callable[[Batch], float]]:
    """The reference model and its training step: forward, the same loss (a mean over target
    tokens), backward, Adam with the same betas, epsilon and Eq. 3 rate."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = NNTransformerReference(cfg.model).to(device)
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
    schedule = InverseSqrtSchedule(cfg.model.d_model, t.warmup_steps, t.lr_scale)
    done = [0]

    def step(batch: Batch) -> float:
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logits = forward(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_mask)
        loss, _, n = label_smoothed_cross_entropy(logits, batch.tgt_out, t.label_smoothing)
        (loss / n).backward()
        done[0] += 1
        for group in optimizer.param_groups:
            group["lr"] = schedule(done[0])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


# ---------------------------------------------------------------------------- batches and FLOPs


def synthetic_pairs(n: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Sentence pairs with verse-like lengths (log-normal, median 30 subwords), random ids."""
    rng = np.random.default_rng(seed)
    src_lens = np.clip(rng.lognormal(math.log(30), 0.5, n), 2, 200).astype(int)
    tgt_lens = np.clip(src_lens * rng.normal(0.95, 0.15, n), 2, 200).astype(int)
    draw = lambda k: rng.integers(4, vocab, k).tolist()  # noqa: E731
    return [draw(k) for k in src_lens], [draw(k) for k in tgt_lens]


def bucketed_batches(cfg: Config, pairs: tuple[list, list], count: int) -> list[Batch]:
    """The first ``count`` training batches of epoch 0, as ``aiayn train`` makes them."""
    stream = BatchStream(pairs[0], pairs[1], cfg.data.batch_tokens, cfg.data.max_len, cfg.train.seed)
    batches = []
    for _, _, batch in stream:
        batches.append(batch)
        if len(batches) == count:
            return batches
    return batches


def fixed_batch(vocab: int, rows: int = FIXED_ROWS, length: int = FIXED_LEN) -> Batch:
    """rows × length on both sides, no padding: src = x + EOS, tgt_in = BOS + y, tgt_out = y + EOS."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, vocab, (rows, length - 1), generator=g).tolist()
    y = torch.randint(4, vocab, (rows, length - 1), generator=g).tolist()
    return collate(range(rows), x, y)


def training_flops(m: ModelConfig, batch: Batch) -> float:
    """Model FLOPs of one training step on the real (unpadded) tokens: 6 × forward MACs
    (forward 2 FLOPs per multiply-add, backward twice the forward). Per sentence pair with s
    source and t target positions (EOS/BOS included), with a = H·d_k + H·d_v:

        encoder, per layer:  s · (2·D·a + 2·D·d_ff)            + s² · a
        decoder, per layer:  t · (2·D·a + D·a + 2·D·d_ff) + s · D·a + (t² + t·s) · a
        output layer:        t · D · V

    Attention over the full square t² (the causal mask is not halved, as PaLM's MFU counts);
    embeddings, LayerNorm, softmax and the loss are left out."""
    s = batch.src_mask.sum(dim=1).double()
    t = batch.tgt_mask.sum(dim=1).double()
    a = m.n_heads * (m.head_dim_k + m.head_dim_v)
    D = m.d_model
    enc = m.n_layers * (s.sum() * (2 * D * a + 2 * D * m.d_ff) + (s * s).sum() * a)
    dec = m.decoder_layers * (t.sum() * (3 * D * a + 2 * D * m.d_ff) + s.sum() * D * a + (t * t + t * s).sum() * a)
    out = t.sum() * D * m.vocab_size
    return float(6 * (enc + dec + out))


# ---------------------------------------------------------------------------- measuring


@dataclass
class Result:
    stats: dict[str, float]
    memory: PeakMemory
    tokens: int
    flops: float
    batches: int


def measure(
    step: Callable[[Batch], object], batches: list[Batch], cfg: Config, reps: int, device: torch.device
) -> Result:
    """One warm-up pass over ``batches`` (allocates Adam's moments, picks kernels), then ``reps``
    timed passes. Throughput: target tokens (real, EOS included) per second."""

    def one_pass() -> None:
        for batch in batches:
            step(batch)

    one_pass()
    with PeakMemory(device) as memory:
        times = repeat(one_pass, reps, device, warmup=0)
    tokens = sum(b.n_tgt_tokens for b in batches)
    flops = sum(training_flops(cfg.model, b) for b in batches)
    return Result(rate_stats(tokens, times), memory, tokens, flops, len(batches))


def emit(
    report: Reporter,
    impl: str,
    preset: str,
    kind: str,
    precision: str,
    r: Result,
    peaks: dict[str, float],
    aiayn: Result | None,
    **extra: object,
) -> None:
    """One line; ``mfu`` is against the fp32 matmul peak, ``mfu_own_precision`` against the peak
    of the precision the line ran in."""
    flops_rate = r.stats["median"] * r.flops / r.tokens
    report.emit(
        impl=impl,
        preset=preset,
        batch=kind,
        precision=precision,
        **r.stats,
        unit="tgt tokens/s",
        batches_per_rep=r.batches,
        aiayn_speedup=(aiayn.stats["median"] / r.stats["median"]) if aiayn else 1.0,
        tokens_per_rep=r.tokens,
        model_gflops_per_rep=round(r.flops / 1e9, 3),
        model_gflops_per_s=round(flops_rate / 1e9, 2),
        mfu=round(flops_rate / 1e9 / peaks["fp32"], 4),
        mfu_own_precision=round(flops_rate / 1e9 / peaks[precision], 4),
        peak_mem_mb=round(r.memory.peak_mb, 1),
        step_mem_mb=round(r.memory.added_mb, 1),
        **extra,
    )


def run_aiayn(
    cfg: Config,
    kinds: dict[str, list[Batch]],
    name: str,
    args: argparse.Namespace,
    device: torch.device,
    report: Reporter,
    peaks: dict[str, float],
    extra: dict,
) -> tuple[dict[str, Result], str]:
    """Measure aiayn on every kind of batch (and profile one step); returns the results and the
    precision ``choose_precision`` picked."""
    trainer = build_training_step(cfg, Runtime(device))
    precision = "bf16" if trainer.autocast is not None else "fp32"
    ours = {
        kind: measure(lambda b: trainer.update([b]), batches, cfg, args.reps, device) for kind, batches in kinds.items()
    }
    for kind, r in ours.items():
        emit(report, "aiayn", name, kind, precision, r, peaks, None, **extra)
    if args.profile:
        first = kinds["bucketed"][0]
        top = profile_top(lambda: trainer.update([first]), device, f"aiayn training step, {name}")
        report.emit(
            bench="train-profile", impl="aiayn", preset=name, batch="bucketed", precision=precision, top_ops=top
        )
    return ours, precision


def run_preset(
    name: str,
    data_dir: Path | None,
    args: argparse.Namespace,
    device: torch.device,
    report: Reporter,
    peaks: dict[str, float],
) -> None:
    if data_dir is not None:
        from aiayn.data.batching import tokenized_split
        from aiayn.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(data_dir / "spm.model")
        cfg = preset_config(name, tokenizer.vocab_size, compile=args.compile)
        _, _, src, tgt = tokenized_split(data_dir, "train", tokenizer)
        source = f"bible ({data_dir})"
    else:
        cfg = preset_config(name, compile=args.compile)
        src, tgt = synthetic_pairs(4000, cfg.model.vocab_size)
        source = "synthetic lengths (no prepared Bible folder)"
    count = args.batches or BUCKETED_BATCHES.get(name, 2)
    rows = 16 if args.quick else FIXED_ROWS
    kinds = {
        "bucketed": bucketed_batches(cfg, (src, tgt), count),
        f"fixed {rows}x{FIXED_LEN}": [fixed_batch(cfg.model.vocab_size, rows)],
    }
    kinds = {k: [b.to(device) for b in v] for k, v in kinds.items()}
    extra = {
        "data": source,
        "vocab": cfg.model.vocab_size,
        "batch_tokens": cfg.data.batch_tokens,
        "compile": args.compile,
    }

    ours, precision = run_aiayn(cfg, kinds, name, args, device, report, peaks, extra)
    gc.collect()  # aiayn's model and optimizer are gone before the reference is built
    for autocast in [None] + ([torch.bfloat16] if precision == "bf16" else []):
        label = "bf16" if autocast is not None else "fp32"
        model, step = reference_step(cfg, device, autocast, args.compile)
        for kind, batches in kinds.items():
            r = measure(step, batches, cfg, args.reps, device)
            emit(report, "torch.nn.Transformer", name, kind, label, r, peaks, ours[kind], **extra)
        del model, step
        gc.collect()


def main(argv: list[str] | None = None) -> None:
    p = parser("Training throughput: aiayn vs torch.nn.Transformer.", "small,base")
    p.add_argument(
        "--batches", type=int, default=0, help="bucketed batches per timed pass (default 3 for small, 2 for base)"
    )
    args = p.parse_args(argv)
    bound_kernel_caches()  # as `aiayn train` does, before the first bf16 matmul: time what training runs
    device = setup(args)
    data_dir = find_data(args.data)
    report = Reporter("train", device, args.threads)
    n = 512 if args.quick else 2048
    peaks = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        stats = matmul_peak(device, dtype, n=n, reps=args.reps)
        peaks[label] = stats["max"]
        report.emit(
            bench="matmul-peak",
            impl="torch.matmul",
            preset="",
            batch=f"{n}x{n}",
            precision=label,
            **stats,
            unit="GFLOP/s",
        )
    for name in presets(args):
        run_preset(name, data_dir, args, device, report, peaks)
    report.summary(extra=("precision", "mfu", "mfu_own_precision", "peak_mem_mb"))


if __name__ == "__main__":
    run_main(main)

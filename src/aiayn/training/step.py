"""One §5 update: the model, its precision, Adam(β₁, β₂, ε) and the learning-rate schedule.

``build_training_step`` makes everything an update needs, for ``aiayn train`` (``Trainer``)
and for the training benchmark alike, so the benchmark times the step that training runs.
An update sums the label-smoothed loss over all micro-batches of all ranks and divides it by
the update's total number of target tokens (docs/pitfalls.md: "Accumulation" and "DDP
normalisation").
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from aiayn.config import AiaynError, Config
from aiayn.data.batching import Batch
from aiayn.models.build import build_model, set_dropout
from aiayn.runtime import Runtime
from aiayn.training.loss import label_smoothed_cross_entropy
from aiayn.training.precision import choose_precision
from aiayn.training.schedule import make_schedule


@dataclass
class TrainingStep:
    """The model and what updates it. ``step`` counts the updates taken."""

    cfg: Config
    rt: Runtime
    model: nn.Module  # the network ``model.arch`` names (models/build.py)
    ddp: nn.Module  # the model, or its DistributedDataParallel wrapper
    forward: Callable[..., Tensor]  # ``ddp``, compiled when train.compile is set
    autocast: torch.dtype | None  # bf16 autocast, or None for float32
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int, float, float], float]  # (step, budget used, budget used at warmup's end) -> rate
    step: int = 0
    warmup_progress: float = 0.0  # budget used when warmup ended: the budgeted schedules decay from there

    def all_reduce(self, values: list[float]) -> list[float]:
        """Sums over ranks (as they are in one process)."""
        if self.rt.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.rt.device)
        dist.all_reduce(t)
        return t.tolist()

    def loss(
        self, batch: Batch, forward: Callable[..., Tensor] | None = None, *, exact: bool = False
    ) -> tuple[Tensor, Tensor, int]:
        """Label-smoothed loss sum, NLL sum and token count of one batch, under the run's precision,
        or in float32 with ``exact`` (validation: its figures then compare across precisions)."""
        bf16 = self.autocast is not None and not exact
        with torch.autocast(self.rt.device.type, dtype=self.autocast or torch.bfloat16, enabled=bf16):
            logits = (forward or self.forward)(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_mask)  # (n, V)
        return label_smoothed_cross_entropy(logits, batch.tgt_out[batch.tgt_mask], self.cfg.train.label_smoothing)

    def _micro_step(self, batch: Batch, tokens_in_update: float, sync: bool) -> tuple[float, float]:
        # DDP synchronises gradients on every backward unless told not to: only the last micro-batch does.
        ctx = contextlib.nullcontext() if sync or self.rt.world_size == 1 else self.ddp.no_sync()
        with ctx:
            loss, nll, _ = self.loss(batch)
            # DDP averages gradients over ranks; × world_size turns that into a sum over ranks.
            (loss * (self.rt.world_size / tokens_in_update)).backward()
        return loss.item(), nll.item()

    def update(self, batches: list[Batch], progress: float = 0.0) -> dict:
        """One optimizer step over ``batches`` (this rank's micro-batches); ``progress`` is the
        fraction of the run's budget used, which the budgeted schedules read."""
        tokens = self.all_reduce([float(sum(b.n_tgt_tokens for b in batches))])[0]
        loss_sum = nll_sum = 0.0
        for i, batch in enumerate(batches):
            try:
                loss, nll = self._micro_step(batch.to(self.rt.device), tokens, sync=i == len(batches) - 1)
            except torch.OutOfMemoryError:
                raise AiaynError(
                    f"out of memory on a batch of {batch.src.numel()} source + {batch.tgt_in.numel()} "
                    f"target padded tokens; lower data.batch_tokens (now {self.cfg.data.batch_tokens}) "
                    f"and raise train.update_tokens to keep the update size"
                ) from None
            loss_sum, nll_sum = loss_sum + loss, nll_sum + nll
        loss_sum, nll_sum = self.all_reduce([loss_sum, nll_sum])
        finite = math.isfinite(loss_sum)
        max_norm = self.cfg.train.clip_norm or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)) if finite else math.nan
        finite = finite and math.isfinite(grad_norm)
        if finite:
            lr = self.schedule(self.step + 1, progress, self.warmup_progress)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.step += 1
            if self.step == self.cfg.train.warmup_steps:
                self.warmup_progress = progress
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "finite": finite,
            "loss": loss_sum / tokens,
            "nll": nll_sum / tokens,
            "tokens": tokens,
            "grad_norm": grad_norm,
            "lr": self.schedule(max(self.step, 1), progress, self.warmup_progress),
        }


def dropout_at(cfg: Config, *, epoch: int) -> float:
    """P_drop of an update in ``epoch``: none before ``train.dropout_from_epoch`` ("late dropout"),
    ``model.dropout`` from there."""
    return cfg.model.dropout if epoch >= cfg.train.dropout_from_epoch else 0.0


def build_training_step(cfg: Config, runtime: Runtime, *, log: Callable[[str], None] | None = None) -> TrainingStep:
    """The model (seeded by train.seed), its precision (``choose_precision``, the same on every
    rank), DDP when there are several ranks, Adam with the config's betas and ε, the schedule."""
    t = cfg.train
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    model = build_model(cfg.model).to(runtime.device)
    if t.dropout_from_epoch:  # the probe times the steps a run starts with: under late dropout, none
        set_dropout(model, dropout_at(cfg, epoch=0))
    if log is None:
        log = (lambda m: print(m, file=sys.stderr)) if runtime.is_main else (lambda m: None)
    autocast = choose_precision(t.precision, runtime.device, model, cfg.data.batch_tokens, log=log)
    if runtime.world_size > 1:  # every rank must run the same precision: bf16 only if all chose it
        agree = torch.tensor([float(autocast is not None)], device=runtime.device)
        dist.all_reduce(agree, op=dist.ReduceOp.MIN)
        autocast = torch.bfloat16 if agree.item() else None
    ddp = torch.nn.parallel.DistributedDataParallel(model) if runtime.world_size > 1 else model
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=0.0,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
        fused=True,
    )
    schedule = make_schedule(t.schedule, cfg.model.d_model, t.warmup_steps, t.lr_scale)
    forward = torch.compile(ddp) if t.compile else ddp
    return TrainingStep(cfg, runtime, model, ddp, forward, autocast, optimizer, schedule)

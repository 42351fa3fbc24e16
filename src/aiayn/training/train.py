"""§5 Training: the loop that runs updates, validates, and writes checkpoints.

One process or many (``torchrun --nproc_per_node=N -m aiayn train …`` uses PyTorch's
DistributedDataParallel; every rank builds the same batch list and takes its own shard).
``step.build_training_step`` makes the model, its precision, Adam and the schedule; this module
reads the data, runs the budget (steps, epochs or minutes), validates and checkpoints.
Everything that decides what happens next — weights, Adam moments, step, data position, RNG
states — is in the checkpoint, so a killed run resumes exactly (docs/pitfalls.md: "Resume").
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from aiayn.config import AiaynError, Config, apply_override, from_dict, load_config
from aiayn.data.batching import BatchStream, fixed_batches, target_counts, tokenized_split
from aiayn.data.corpus import load_meta
from aiayn.data.symbols import open_tokenizer, tokenizer_file
from aiayn.evaluation.evaluate import model_bleu
from aiayn.models.build import set_dropout
from aiayn.models.transformer import count_parameters
from aiayn.runtime import Runtime, rng_state, set_rng_state, setup_runtime
from aiayn.training import checkpoint as ckpt
from aiayn.training.ema import WeightEMA
from aiayn.training.kernel_caches import bound_kernel_caches
from aiayn.training.runlog import MetricsLog, RateMeter, report_outside
from aiayn.training.schedule import budget_progress
from aiayn.training.step import build_training_step, dropout_at


class Trainer:
    """A run: its data, its ``TrainingStep``, its clock and budget, its metrics and checkpoints."""

    def __init__(self, cfg: Config, data_dir: Path, run_dir: Path, runtime: Runtime, resume: dict | None = None):
        self.cfg, self.data_dir, self.run_dir, self.rt = cfg, data_dir, run_dir, runtime
        self.tokenizer = open_tokenizer(data_dir)
        cfg.model.vocab_size = self.tokenizer.vocab_size
        _, _, src, tgt = tokenized_split(data_dir, "train", self.tokenizer)
        if not src:
            raise AiaynError(f"{data_dir}: the train split is empty; run `aiayn prepare` again")
        t = cfg.train
        self.stream = BatchStream(
            src,
            tgt,
            cfg.data.batch_tokens,
            cfg.data.max_len,
            t.seed,
            runtime.rank,
            runtime.world_size,
            sort=cfg.data.sort,
            limit=cfg.data.limit,
        )
        # Micro-batches per rank and update, so that one update sees ≈ update_tokens target tokens.
        self.accumulate = max(1, math.ceil(t.update_tokens / (cfg.data.batch_tokens * runtime.world_size)))
        self.valid_src, self.valid_ref, vs, vt = tokenized_split(data_dir, "valid", self.tokenizer)
        # BLEU is translation's metric; other tasks validate by loss, and `aiayn evaluate` scores them.
        self.task = load_meta(data_dir)["task"]
        if self.task != "translation" and runtime.is_main and cfg.data.valid_bleu_sentences:
            print(
                f"aiayn: task {self.task}: validation reports loss only (no BLEU); `aiayn evaluate` and "
                "`aiayn tune-decoding` score it with the task's own metric",
                file=sys.stderr,
            )
        self.valid_batches = fixed_batches(vs, vt, cfg.data.batch_tokens, cfg.data.max_len)
        self.training = build_training_step(cfg, runtime)
        self.model = self.training.model
        if resume is None and hasattr(self.model, "init_output_bias"):  # a network that starts from the unigram
            self.model.init_output_bias(target_counts(tgt, cfg.model.vocab_size).to(runtime.device))
        self.progress = 0.0  # fraction of the budget used, for the budgeted schedules
        self.minutes_before, self.best_valid, self.saved_step = 0.0, math.inf, -1
        if resume is not None:
            if len(resume["stream"]) != runtime.world_size:
                raise AiaynError(
                    f"the checkpoint was written by {len(resume['stream'])} process(es); resume it with "
                    f"the same number (now {runtime.world_size})"
                )
            self.model.load_state_dict(resume["model"])
            self.training.optimizer.load_state_dict(resume["optimizer"])
            self.stream.load_state_dict(resume["stream"][runtime.rank])
            self.training.step, self.minutes_before = int(resume["step"]), float(resume["minutes"])
            self.training.warmup_progress = float(resume.get("warmup_progress", 0.0))
            self.best_valid = float(resume["best_valid"])
            set_rng_state(resume["rng"][runtime.rank])
        # Made after a resume's weights are loaded: a run given ema_decay when resumed starts its
        # average there.
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay else None
        if self.ema is not None and resume is not None and "ema" in resume:
            self.ema.load_state_dict(self.model, resume["ema"])
        self.log = MetricsLog(run_dir, self.step) if runtime.is_main else None
        # Seconds and count of the work inside the budget that is not updates: it buys no learning,
        # so every run says what it cost (``timing.json``, and a line at the end).
        self.outside = {"validation": [0.0, 0], "checkpoints": [0.0, 0]}

    @property
    def step(self) -> int:
        return self.training.step

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, final: bool = False) -> dict:
        """Valid loss and perplexity, in float32 whatever the training precision; greedy BLEU on a
        fixed subset, or at the end of training beam-search BLEU (the config's decoding settings)
        on the whole valid split."""
        self.model.eval()
        result = self.valid_loss()
        if self.ema is not None:
            with self.ema.applied(self.model):
                result.update({f"ema_{k}": v for k, v in self.valid_loss().items()})
        bleu_wanted = self.rt.is_main and self.valid_src and self.task == "translation"  # others: loss only
        n_bleu = self.cfg.data.valid_bleu_sentences if bleu_wanted else 0
        if n_bleu:
            src, ref = (self.valid_src, self.valid_ref) if final else (self.valid_src[:n_bleu], self.valid_ref[:n_bleu])
            beam = self.cfg.decode.beam_size if final else 1
            bleu = model_bleu(self.model, self.tokenizer, self.cfg, src, ref, beam_size=beam)
            result["valid_beam_bleu" if final else "valid_bleu"] = bleu
        self.model.train()
        return result

    def valid_loss(self) -> dict:
        loss_sum = nll_sum = tokens = 0.0
        for batch in self.valid_batches:
            loss, nll, n = self.training.loss(batch.to(self.rt.device), forward=self.model, exact=True)
            loss_sum, nll_sum, tokens = loss_sum + loss.item(), nll_sum + nll.item(), tokens + n
        return {"valid_loss": loss_sum / max(tokens, 1), "valid_ppl": math.exp(min(nll_sum / max(tokens, 1), 50))}

    # ------------------------------------------------------------------ checkpoints
    def state(self, minutes: float) -> dict:
        streams, rngs = [self.stream.state_dict()], [rng_state()]
        if self.rt.world_size > 1:
            streams, rngs = [None] * self.rt.world_size, [None] * self.rt.world_size
            dist.all_gather_object(streams, self.stream.state_dict())
            dist.all_gather_object(rngs, rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.training.optimizer.state_dict(),
            "config": json.dumps(self.cfg.to_dict()),
            "step": self.step,
            "minutes": minutes,
            "stream": streams,
            "rng": rngs,
            "best_valid": self.best_valid,
            "warmup_progress": self.training.warmup_progress,
            **({"ema": self.ema.state_dict(self.model)} if self.ema is not None else {}),
        }

    def save(self, minutes: float, best: bool = False) -> None:
        start = time.monotonic()
        state = self.state(minutes)  # every rank joins the gathers; rank 0 writes
        if self.rt.is_main:
            ckpt.save_checkpoint(ckpt.step_path(self.run_dir, self.step), state)
            if best:
                self.save_best(state["model"], state["config"])
            ckpt.prune_checkpoints(self.run_dir, self.cfg.train.keep_last)
        self.saved_step = self.step
        self._count("checkpoints", start)

    def save_best(self, model: dict | None = None, config: str | None = None) -> None:
        """best.pt: the weights alone, a third of a full checkpoint (no Adam moments)."""
        start = time.monotonic()
        if self.rt.is_main:
            ckpt.save_checkpoint(
                ckpt.checkpoint_dir(self.run_dir) / "best.pt",
                {
                    "model": model or self.model.state_dict(),
                    "config": config or json.dumps(self.cfg.to_dict()),
                    "step": self.step,
                },
            )
        if model is None:
            self._count("checkpoints", start)

    def _count(self, kind: str, start: float) -> None:
        self.outside[kind][0] += time.monotonic() - start
        self.outside[kind][1] += 1

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        t = self.cfg.train
        start, first_step = time.monotonic(), self.step
        minutes = lambda: self.minutes_before + (time.monotonic() - start) / 60  # noqa: E731
        last_ckpt_minutes, bad_steps = minutes(), 0
        meter = RateMeter()
        stream = iter(self.stream)
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not self.rt.is_main,
            file=sys.stderr,
        )
        if self.rt.is_main:
            bar.write(self.describe())
        self.model.train()
        marks = tail_marks(t.tail_fraction, t.keep_last)
        while True:
            epoch = self.stream.epoch
            before, self.progress = self.progress, budget_progress(self.step, minutes(), t)
            stop = (
                self.step >= t.max_steps
                or (t.max_epochs and epoch >= t.max_epochs)
                or (t.max_minutes and minutes() >= t.max_minutes)
            )
            if self.rt.world_size > 1:  # every rank must follow rank 0's clock: same rates, same stop
                stop, self.progress = self._broadcast([float(bool(stop)), self.progress])
            if stop:
                break
            in_tail = any(before < m <= self.progress for m in marks) and self.step > first_step
            if in_tail and self.saved_step != self.step:
                self.save(minutes())
                last_ckpt_minutes = minutes()
            if t.dropout_from_epoch:  # read from the epoch each update, so a resumed run switches alike
                set_dropout(self.model, dropout_at(self.cfg, epoch=epoch))
            last = self.training.update([next(stream)[2] for _ in range(self.accumulate)], self.progress)
            if not last["finite"]:
                bad_steps += 1
                if bad_steps >= t.max_bad_steps:
                    raise AiaynError(
                        f"{bad_steps} updates in a row had a NaN/inf loss or gradient at step {self.step}; "
                        f"lower train.lr_scale or set train.clip_norm (last good checkpoint kept in "
                        f"{ckpt.checkpoint_dir(self.run_dir)})"
                    )
                continue
            bad_steps = 0
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            meter.add(last["tokens"])
            bar.update(1)
            row = {}
            if self.step % t.log_every == 0 or self.step % t.eval_every == 0:
                row = self._train_row(last, epoch, minutes(), meter.rate(), bar, first_step)
            best = False
            if self.step % t.eval_every == 0:
                started = time.monotonic()
                row.update(self.validate())
                self._count("validation", started)
                best = row["valid_loss"] < self.best_valid
                self.best_valid = min(self.best_valid, row["valid_loss"])
                bar.write(
                    f"step {self.step}: valid loss {row['valid_loss']:.3f}, ppl {row['valid_ppl']:.2f}"
                    + (f", moving average's loss {row['ema_valid_loss']:.3f}" if "ema_valid_loss" in row else "")
                    + (f", greedy BLEU {row['valid_bleu']:.1f}" if "valid_bleu" in row else "")
                )
            if row and self.log:
                self.log.write(row)
            due = (t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0) or (
                t.checkpoint_every_minutes and minutes() - last_ckpt_minutes >= t.checkpoint_every_minutes
            )
            # A better valid loss alone writes only best.pt; a full checkpoint waits for its turn,
            # and a write of either kind restarts the minutes timer.
            due, best = self.training.all_reduce([float(bool(due)), float(best)])
            if due:
                self.save(minutes(), bool(best))
                last_ckpt_minutes = minutes()
            elif best:
                self.save_best()
                last_ckpt_minutes = minutes()
        bar.close()
        return self.finish(minutes(), minutes() - self.minutes_before, self.step - first_step)

    def describe(self) -> str:
        m, late = self.cfg.model, self.cfg.train.dropout_from_epoch
        return (
            f"aiayn: {count_parameters(self.model):,} parameters, {len(self.stream)} batches/epoch per rank, "
            f"{self.accumulate} micro-batch(es) x {self.rt.world_size} rank(s) per update, "
            f"precision {'bf16' if self.training.autocast else 'fp32'}, {torch.get_num_threads()} threads, "
            f"device {self.rt.device}, dropout {m.dropout:g}" + (f" from epoch {late}" if late else "")
        )

    def _train_row(self, last: dict, epoch: int, minutes: float, rate: float, bar: tqdm, first_step: int) -> dict:
        """The metrics row of a logged step; also moves the progress bar's figures."""
        t = self.cfg.train
        bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}", tok_s=f"{rate:.0f}", epoch=epoch)
        if t.max_minutes:  # a time-boxed run: the bar's end is the step the time budget reaches
            steps_per_minute = (self.step - first_step) / max(minutes - self.minutes_before, 1e-9)
            reachable = self.step + int((t.max_minutes - minutes) * steps_per_minute)
            bar.total = max(self.step, min(t.max_steps, reachable))
            bar.refresh()
        return {
            "step": self.step,
            "epoch": epoch,
            "minutes": round(minutes, 3),
            "train_loss": last["loss"],
            "train_nll": last["nll"],
            "lr": last["lr"],
            "tokens_per_s": rate,
            "grad_norm": last["grad_norm"],
        }

    def finish(self, minutes: float, run_minutes: float = 0.0, updates: int = 0) -> dict:
        """After the budget: what the time inside it went to, beam BLEU on all of valid, the final
        checkpoint, the last metrics row."""
        if self.rt.is_main and run_minutes > 0:
            report_outside(self.run_dir, self.outside, run_minutes, updates)
        if self.rt.is_main and self.step and self.cfg.data.valid_bleu_sentences and self.task == "translation":
            print(
                f"aiayn: beam-{self.cfg.decode.beam_size} BLEU on all {len(self.valid_src)} valid sentences ...",
                file=sys.stderr,
            )
        final = self.validate(final=True) if self.step else {}
        if self.step and self.saved_step != self.step:
            best = final.get("valid_loss", math.inf) < self.best_valid
            self.best_valid = min(self.best_valid, final.get("valid_loss", math.inf))
            self.save(minutes, best)
        if self.log:
            self.log.write({"step": self.step, "epoch": self.stream.epoch, "minutes": round(minutes, 3), **final})
        return {"step": self.step, "minutes": minutes, **final}

    def _broadcast(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.rt.device)
        dist.broadcast(t, src=0)
        return t.tolist()


def tail_marks(fraction: float, keep: int) -> list[float]:
    """Budget fractions at which the tail checkpoints are written: ``keep`` - 1 of them evenly
    over the last ``fraction`` (the final checkpoint, at the end, makes ``keep``)."""
    if fraction <= 0 or keep < 2:
        return []
    return [1.0 - fraction * j / (keep - 1) for j in range(keep - 1, 0, -1)]


def prepare_run_dir(cfg: Config, data_dir: Path, run_dir: Path) -> None:
    """A new run folder gets the resolved config, the tokenizer and the data's metadata."""
    if ckpt.list_checkpoints(run_dir):
        raise AiaynError(
            f"{run_dir} already holds checkpoints; continue it with `aiayn train --resume {run_dir}` "
            f"or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    open_tokenizer(data_dir).copy_to(run_dir)
    if (data_dir / "meta.json").is_file():
        shutil.copy(data_dir / "meta.json", run_dir / "data_meta.json")
    (run_dir / "run.json").write_text(json.dumps({"data_dir": str(data_dir.resolve())}, indent=2))


def train(
    data_dir: Path | None,
    run_dir: Path,
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] = (),
    resume: bool = False,
) -> dict:
    """``aiayn train``: a new run, or ``resume`` one from its newest good checkpoint."""
    run_dir = Path(run_dir)
    state = None
    if resume:
        found = ckpt.latest_good_checkpoint(run_dir)
        if found is None:
            raise AiaynError(f"{run_dir}: no usable checkpoint to resume from")
        path, state = found
        cfg = from_dict(json.loads(state["config"]))
        if ckpt.predates_softmax_bias(cfg, state["model"]):  # its optimizer state has one tensor fewer
            raise AiaynError(
                f"{path}: this LSTM run was written before the LSTM had a softmax bias; translate and "
                "evaluate it as it is, or train it again to continue"
            )
        for item in overrides:  # e.g. a longer max_minutes for the continued run
            apply_override(cfg, item)
        data_dir = Path(data_dir or json.loads((run_dir / "run.json").read_text())["data_dir"])
        print(f"aiayn: resuming {run_dir} from {path.name} (step {state['step']})", file=sys.stderr)
    else:
        if data_dir is None:
            raise AiaynError("train needs --data DIR (a folder made by `aiayn prepare`) or --resume RUN_DIR")
        cfg = load_config(preset, config_file, overrides)
    data_dir = Path(data_dir)
    if tokenizer_file(data_dir) is None:
        raise AiaynError(
            f"{data_dir}: not a prepared data folder (no spm.model or vocab.json); run `aiayn prepare` first"
        )
    # Before the first bf16 matmul (the precision probe's): later, oneDNN's caches are already sized.
    bound_kernel_caches()
    runtime = setup_runtime(cfg.train.threads)
    if runtime.is_main and not resume:
        prepare_run_dir(cfg, data_dir, run_dir)
    if runtime.world_size > 1:
        dist.barrier()
    trainer = Trainer(cfg, data_dir, run_dir, runtime, state)
    if runtime.is_main:
        cfg.save_yaml(run_dir / "config.yaml")
    try:
        result = trainer.run()
        if runtime.world_size > 1:
            # Rank 0 may still be writing the last checkpoint. Once in about 30 two-rank test runs on a
            # loaded 2-core machine, the other rank, having torn its process group down meanwhile,
            # aborted at exit (gloo: "terminate called without an active exception") and failed
            # the torchrun job after a complete run; every rank now tears down after the last write.
            dist.barrier()
    finally:
        if runtime.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return result if runtime.is_main else {}

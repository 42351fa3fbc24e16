"""§5 Training: token batches, label smoothing, Adam(0.9, 0.98, 1e-9) with the Eq. 3 warmup.

One process or many (``torchrun --nproc_per_node=N -m aiayn train …`` uses PyTorch's
DistributedDataParallel; every rank builds the same batch list and takes its own shard).
An update sums the label-smoothed loss over all micro-batches of all ranks and divides by
the update's total number of target tokens (pitfalls 6 and 7). Everything that decides
what happens next — weights, Adam moments, step, data position, RNG states — is in the
checkpoint, so a killed run resumes exactly (pitfall 19).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from aiayn import checkpoint as ckpt
from aiayn.batching import Batch, BatchStream, collate, make_batches
from aiayn.config import AiaynError, Config, from_dict, load_config
from aiayn.kernel_caches import bound_kernel_caches
from aiayn.loss import label_smoothed_cross_entropy
from aiayn.model import Transformer, count_parameters
from aiayn.schedule import make_schedule

METRICS = [
    "step",
    "epoch",
    "minutes",
    "train_loss",
    "train_nll",
    "lr",
    "tokens_per_s",
    "grad_norm",
    "valid_loss",
    "valid_ppl",
    "valid_bleu",
    "valid_beam_bleu",
]


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(threads: int) -> Runtime:
    """One process, or one rank of a torchrun job (RANK/WORLD_SIZE/LOCAL_RANK set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        # torchrun sets OMP_NUM_THREADS=1; alone, use this process's cores (pitfall 24).
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))
    if world_size == 1:
        return Runtime(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Runtime(device, dist.get_rank(), dist.get_world_size())


def _seconds(fn, reps: int = 3) -> float:
    """Fastest of ``reps`` timed calls: the minimum is the least disturbed by other processes."""
    fn()  # warm-up: first calls pick kernels and allocate
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _probe_step_seconds(model: torch.nn.Module, batch_tokens: int) -> tuple[float | None, float]:
    """Seconds of one training step of ``model`` in fp32 and in CPU bf16 autocast; (None, inf)
    when a bf16 matmul is already no faster, so a slow CPU never runs a bf16 step."""
    a = torch.randn(512, 512)
    if _seconds(lambda: a.bfloat16() @ a.bfloat16(), 5) >= _seconds(lambda: a @ a, 5):
        return None, math.inf
    length = 32
    ids = torch.randint(4, model.cfg.vocab_size, (max(1, batch_tokens // length), length))
    mask = torch.ones_like(ids, dtype=torch.bool)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids, ids, mask, mask)
        label_smoothed_cross_entropy(logits, ids[mask], 0.1)[0].backward()
        model.zero_grad(set_to_none=True)

    return _seconds(lambda: step(False)), _seconds(lambda: step(True))


def choose_precision(
    setting: str, device: torch.device, model: torch.nn.Module, batch_tokens: int, log=print
) -> torch.dtype | None:
    """bf16 autocast on CUDA. On a CPU, bf16 only when asked, or ("auto") when a training
    step of this model measures faster in bf16 here: CPUs range from ~100× slower in bf16
    (AVX2 only) to several times faster (AVX512-bf16, AMX), and whole steps gain less than
    matmuls do. A matmul probe rules bf16 out first, so a slow CPU never runs a bf16 step."""
    if setting == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if setting == "bf16":
        return torch.bfloat16
    with torch.random.fork_rng():  # the probe's random inputs and dropout must not shift the run's stream
        fp32, bf16 = _probe_step_seconds(model, batch_tokens)
    if fp32 is None:
        log("aiayn: precision fp32 (a bf16 matmul is not faster on this CPU)")
        return None
    choice = torch.bfloat16 if bf16 < 0.9 * fp32 else None
    log(
        f"aiayn: precision {'bf16' if choice else 'fp32'} (a training step took {fp32:.3f} s in fp32, "
        f"{bf16:.3f} s in bf16 autocast on this CPU)"
    )
    return choice


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_split_ids(
    data_dir: Path, split: str, tokenizer
) -> tuple[list[str], list[str], list[list[int]], list[list[int]]]:
    from aiayn.corpus import read_split

    src, tgt = read_split(data_dir, split)
    return src, tgt, tokenizer.encode_batch(src), tokenizer.encode_batch(tgt)


class MetricsLog:
    """metrics.csv (always) and TensorBoard event files in RUN/tb (when tensorboard is installed)."""

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resume_step and self.path.is_file():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRICS)
            writer.writeheader()
            writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:
            self.tb = None

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, METRICS).writerow({k: row.get(k, "") for k in METRICS})
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()


class Trainer:
    def __init__(self, cfg: Config, data_dir: Path, run_dir: Path, runtime: Runtime, resume: dict | None = None):
        from aiayn.tokenizer import Tokenizer

        self.cfg, self.data_dir, self.run_dir, self.rt = cfg, data_dir, run_dir, runtime
        self.tokenizer = Tokenizer.load(data_dir / "spm.model")
        cfg.model.vocab_size = self.tokenizer.vocab_size
        _, _, src, tgt = load_split_ids(data_dir, "train", self.tokenizer)
        if not src:
            raise AiaynError(f"{data_dir}: the train split is empty; run `aiayn prepare` again")
        t = cfg.train
        self.stream = BatchStream(
            src, tgt, cfg.data.batch_tokens, cfg.data.max_len, t.seed, runtime.rank, runtime.world_size
        )
        # Micro-batches per rank and update, so that one update sees ≈ update_tokens target tokens.
        self.accumulate = max(1, math.ceil(t.update_tokens / (cfg.data.batch_tokens * runtime.world_size)))
        self.valid_src, self.valid_ref, vs, vt = load_split_ids(data_dir, "valid", self.tokenizer)
        keep = [i for i, (x, y) in enumerate(zip(vs, vt)) if len(x) <= cfg.data.max_len and len(y) <= cfg.data.max_len]
        self.valid_batches = [
            collate([keep[j] for j in b], vs, vt)
            for b in make_batches(
                [len(vs[i]) for i in keep], [len(vt[i]) for i in keep], cfg.data.batch_tokens, 0, 0, shuffle=False
            )
        ]

        torch.manual_seed(t.seed)
        random.seed(t.seed)
        self.model = Transformer(cfg.model).to(runtime.device)
        self.autocast = choose_precision(
            t.precision,
            runtime.device,
            self.model,
            cfg.data.batch_tokens,
            log=lambda m: print(m, file=sys.stderr) if runtime.is_main else None,
        )
        if runtime.world_size > 1:  # every rank must run the same precision: bf16 only if all chose it
            agree = torch.tensor([float(self.autocast is not None)], device=runtime.device)
            dist.all_reduce(agree, op=dist.ReduceOp.MIN)
            self.autocast = torch.bfloat16 if agree.item() else None
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if runtime.world_size > 1 else self.model
        self.forward = torch.compile(self.ddp) if t.compile else self.ddp
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=0.0,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
            fused=True,
        )
        self.schedule = make_schedule(t.schedule, cfg.model.d_model, t.warmup_steps, t.lr_scale)
        self.progress = 0.0  # fraction of the budget used, for the budgeted schedules
        self.step, self.minutes_before, self.best_valid = 0, 0.0, math.inf
        self.saved_step = -1
        if resume is not None:
            if len(resume["stream"]) != runtime.world_size:
                raise AiaynError(
                    f"the checkpoint was written by {len(resume['stream'])} process(es); resume it with "
                    f"the same number (now {runtime.world_size})"
                )
            self.model.load_state_dict(resume["model"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.stream.load_state_dict(resume["stream"][runtime.rank])
            self.step, self.minutes_before = int(resume["step"]), float(resume["minutes"])
            self.best_valid = float(resume["best_valid"])
            set_rng_state(resume["rng"][runtime.rank])
        self.log = MetricsLog(run_dir, self.step) if runtime.is_main else None

    # ------------------------------------------------------------------ one update
    def _broadcast(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.rt.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    def _all_reduce(self, values: list[float]) -> list[float]:
        if self.rt.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.rt.device)
        dist.all_reduce(t)
        return t.tolist()

    def _loss(self, forward, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Label-smoothed loss sum, NLL sum and token count of one batch, under the run's precision."""
        with torch.autocast(
            self.rt.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None
        ):
            logits = forward(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_mask)  # (n, V)
        return label_smoothed_cross_entropy(logits, batch.tgt_out[batch.tgt_mask], self.cfg.train.label_smoothing)

    def _micro_step(self, batch: Batch, tokens_in_update: float, sync: bool) -> tuple[float, float]:
        ctx = contextlib.nullcontext() if sync or self.rt.world_size == 1 else self.ddp.no_sync()
        with ctx:
            loss, nll, _ = self._loss(self.forward, batch)
            # DDP averages gradients over ranks; × world_size turns that into a sum over ranks.
            (loss * (self.rt.world_size / tokens_in_update)).backward()
        return loss.item(), nll.item()

    def update(self, batches: list[Batch]) -> dict:
        """One optimizer step over ``batches`` (this rank's micro-batches)."""
        tokens = self._all_reduce([float(sum(b.n_tgt_tokens for b in batches))])[0]
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
        loss_sum, nll_sum = self._all_reduce([loss_sum, nll_sum])
        finite = math.isfinite(loss_sum)
        max_norm = self.cfg.train.clip_norm or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)) if finite else math.nan
        finite = finite and math.isfinite(grad_norm)
        if finite:
            lr = self.schedule(self.step + 1, self.progress)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.step += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "finite": finite,
            "loss": loss_sum / tokens,
            "nll": nll_sum / tokens,
            "tokens": tokens,
            "grad_norm": grad_norm,
            "lr": self.schedule(max(self.step, 1), self.progress),
        }

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, final: bool = False) -> dict:
        """Valid loss and perplexity; greedy BLEU on a fixed subset, or at the end of training
        beam-search BLEU (the config's decoding settings) on the whole valid split."""
        self.model.eval()
        loss_sum = nll_sum = tokens = 0.0
        for batch in self.valid_batches:
            loss, nll, n = self._loss(self.model, batch.to(self.rt.device))
            loss_sum, nll_sum, tokens = loss_sum + loss.item(), nll_sum + nll.item(), tokens + n
        result = {"valid_loss": loss_sum / max(tokens, 1), "valid_ppl": math.exp(min(nll_sum / max(tokens, 1), 50))}
        n_bleu = self.cfg.data.valid_bleu_sentences if self.rt.is_main else 0  # other ranks: loss only
        if n_bleu and final:
            result["valid_beam_bleu"] = self.bleu(self.valid_src, self.valid_ref, self.cfg.decode.beam_size)
        elif n_bleu:
            result["valid_bleu"] = self.bleu(self.valid_src[:n_bleu], self.valid_ref[:n_bleu], beam_size=1)
        self.model.train()
        return result

    def bleu(self, sources: list[str], references: list[str], beam_size: int) -> float:
        from aiayn.evaluate import corpus_scores
        from aiayn.translate import Translator

        translator = Translator(self.model, self.tokenizer, self.cfg, device=self.rt.device)
        hyps = [h[0].text for h in translator.translate(sources, beam_size=beam_size, progress=False)]
        return corpus_scores(hyps, references)["bleu"]

    # ------------------------------------------------------------------ checkpoints
    def state(self, minutes: float) -> dict:
        streams, rngs = [self.stream.state_dict()], [rng_state()]
        if self.rt.world_size > 1:
            streams, rngs = [None] * self.rt.world_size, [None] * self.rt.world_size
            dist.all_gather_object(streams, self.stream.state_dict())
            dist.all_gather_object(rngs, rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": json.dumps(self.cfg.to_dict()),
            "step": self.step,
            "minutes": minutes,
            "stream": streams,
            "rng": rngs,
            "best_valid": self.best_valid,
        }

    def save(self, minutes: float, best: bool = False) -> None:
        state = self.state(minutes)  # every rank joins the gathers; rank 0 writes
        if not self.rt.is_main:
            self.saved_step = self.step
            return
        ckpt.save_checkpoint(ckpt.step_path(self.run_dir, self.step), state)
        if best:
            ckpt.save_checkpoint(
                ckpt.checkpoint_dir(self.run_dir) / "best.pt",
                {"model": state["model"], "config": state["config"], "step": self.step},
            )
        ckpt.prune_checkpoints(self.run_dir, self.cfg.train.keep_last)
        self.saved_step = self.step

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        t = self.cfg.train
        start, first_step = time.monotonic(), self.step
        minutes = lambda: self.minutes_before + (time.monotonic() - start) / 60  # noqa: E731
        last_ckpt_minutes, bad_steps, window_tokens, window_start = minutes(), 0, 0.0, time.monotonic()
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
            bar.write(
                f"aiayn: {count_parameters(self.model):,} parameters, {len(self.stream)} batches/epoch per rank, "
                f"{self.accumulate} micro-batch(es) x {self.rt.world_size} rank(s) per update, "
                f"precision {'bf16' if self.autocast else 'fp32'}, {torch.get_num_threads()} threads, "
                f"device {self.rt.device}"
            )
        self.model.train()
        last = {}
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
            batches = [next(stream)[2] for _ in range(self.accumulate)]
            last = self.update(batches)
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
            window_tokens += last["tokens"]
            bar.update(1)
            row = {}
            if self.step % t.log_every == 0 or self.step % t.eval_every == 0:
                rate = window_tokens / max(time.monotonic() - window_start, 1e-9)
                window_tokens, window_start = 0.0, time.monotonic()
                row = {
                    "step": self.step,
                    "epoch": epoch,
                    "minutes": round(minutes(), 3),
                    "train_loss": last["loss"],
                    "train_nll": last["nll"],
                    "lr": last["lr"],
                    "tokens_per_s": rate,
                    "grad_norm": last["grad_norm"],
                }
                bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}", tok_s=f"{rate:.0f}", epoch=epoch)
                if t.max_minutes:  # a time-boxed run: the bar's end is the step the time budget reaches
                    steps_per_minute = (self.step - first_step) / max(minutes() - self.minutes_before, 1e-9)
                    reachable = self.step + int((t.max_minutes - minutes()) * steps_per_minute)
                    bar.total = max(self.step, min(t.max_steps, reachable))
                    bar.refresh()
            best = False
            if self.step % t.eval_every == 0:
                row.update(self.validate())
                best = row["valid_loss"] < self.best_valid
                self.best_valid = min(self.best_valid, row["valid_loss"])
                bar.write(
                    f"step {self.step}: valid loss {row['valid_loss']:.3f}, ppl {row['valid_ppl']:.2f}"
                    + (f", greedy BLEU {row['valid_bleu']:.1f}" if "valid_bleu" in row else "")
                )
            if row and self.log:
                self.log.write(row)
            due = (t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0) or (
                t.checkpoint_every_minutes and minutes() - last_ckpt_minutes >= t.checkpoint_every_minutes
            )
            if self._all_reduce([float(bool(due or best))])[0]:
                self.save(minutes(), best)
                last_ckpt_minutes = minutes()
        bar.close()
        if self.rt.is_main and self.step and self.cfg.data.valid_bleu_sentences:
            print(
                f"aiayn: beam-{self.cfg.decode.beam_size} BLEU on all {len(self.valid_src)} valid sentences ...",
                file=sys.stderr,
            )
        final = self.validate(final=True) if self.step else {}
        if self.step and self.saved_step != self.step:
            best = final.get("valid_loss", math.inf) < self.best_valid
            self.best_valid = min(self.best_valid, final.get("valid_loss", math.inf))
            self.save(minutes(), best)
        if self.log:
            self.log.write({"step": self.step, "epoch": self.stream.epoch, "minutes": round(minutes(), 3), **final})
        return {"step": self.step, "minutes": minutes(), **final}


def budget_progress(step: int, minutes: float, t) -> float:
    """Fraction of the run's budget used: of ``max_steps``, or of ``max_minutes`` when that
    comes first. The budgeted schedules reach zero, and training stops, at 1."""
    done = step / t.max_steps
    if t.max_minutes:
        done = max(done, minutes / t.max_minutes)
    return min(done, 1.0)


def tail_marks(fraction: float, keep: int) -> list[float]:
    """Budget fractions at which the tail checkpoints are written: ``keep`` - 1 of them evenly
    over the last ``fraction`` (the final checkpoint, at the end, makes ``keep``)."""
    if fraction <= 0 or keep < 2:
        return []
    return [1.0 - fraction * j / (keep - 1) for j in range(keep - 1, 0, -1)]


def prepare_run_dir(cfg: Config, data_dir: Path, run_dir: Path) -> None:
    """A new run folder gets the resolved config, the tokenizer and the data's metadata."""
    from aiayn.tokenizer import Tokenizer

    if ckpt.list_checkpoints(run_dir):
        raise AiaynError(
            f"{run_dir} already holds checkpoints; continue it with `aiayn train --resume {run_dir}` "
            f"or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    Tokenizer.load(data_dir / "spm.model").copy_to(run_dir)
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
        for item in overrides:  # e.g. a longer max_minutes for the continued run
            from aiayn.config import apply_override

            apply_override(cfg, item)
        data_dir = Path(data_dir or json.loads((run_dir / "run.json").read_text())["data_dir"])
        print(f"aiayn: resuming {run_dir} from {path.name} (step {state['step']})", file=sys.stderr)
    else:
        if data_dir is None:
            raise AiaynError("train needs --data DIR (a folder made by `aiayn prepare`) or --resume RUN_DIR")
        cfg = load_config(preset, config_file, overrides)
    data_dir = Path(data_dir)
    if not (data_dir / "spm.model").is_file():
        raise AiaynError(f"{data_dir}: not a prepared data folder (no spm.model); run `aiayn prepare` first")
    # -- training memory (issue 13): before any bf16 matmul, or per-shape kernels pile up
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
    finally:
        if runtime.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return result if runtime.is_main else {}

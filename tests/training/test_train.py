"""Training: loss goes down, a run killed with SIGKILL resumes bit-exactly, two gloo ranks
equal one process over the same global batches, damaged checkpoints fall back, NaN guard."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from toydata import make_toy_data

from aiayn.cli import main
from aiayn.config import AiaynError, load_config
from aiayn.training import checkpoint as ckpt

TINY = ["--preset", "tiny", "threads=1", "valid_bleu_sentences=0", "precision=fp32"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_data(tmp_path_factory.mktemp("toy"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(path)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def newest_step(run: Path) -> int:
    """Step of the newest checkpoint (older ones are pruned, so their count stops growing)."""
    paths = ckpt.list_checkpoints(run)
    return int(paths[-1].stem.split("_")[1]) if paths else 0


def aiayn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "aiayn", *args]


def test_loss_decreases_and_run_folder_is_complete(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(toy),
                "--out",
                str(run),
                *TINY,
                "max_steps=300",
                "eval_every=100",
                "log_every=10",
                "checkpoint_every_steps=100",
                "valid_bleu_sentences=20",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    valid = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    train = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert valid[-1] < valid[0] - 0.5 and train[-1] < train[0] - 0.5
    assert all(r["valid_bleu"] for r in rows if r["valid_loss"] and r["train_loss"])  # greedy, every evaluation
    assert rows[-1]["valid_beam_bleu"] and not rows[-1]["valid_bleu"]  # beam, whole valid split, at the end
    for name in ("config.yaml", "spm.model", "spm.vocab", "run.json", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000100.pt", "step_00000200.pt", "step_00000300.pt"]
    assert list((run / "tb").iterdir()), "TensorBoard events written"
    saved = ckpt.load_checkpoint(run / "checkpoints" / "step_00000300.pt")
    assert saved["step"] == 300 and '"d_model": 32' in saved["config"]
    # What the budget went to besides updates: 3 validations in the loop, 3 checkpoint writes
    # (the best valid loss at 100, 200 and 300 came with a scheduled write each).
    timing = json.loads((run / "timing.json").read_text())
    assert (timing["updates"], timing["validation_passes"], timing["checkpoint_writes"]) == (300, 3, 3)
    assert 0 < timing["validation_minutes"] + timing["checkpoint_minutes"] < timing["minutes"]
    assert timing["update_minutes"] == pytest.approx(
        timing["minutes"] - timing["validation_minutes"] - timing["checkpoint_minutes"], abs=2e-3
    )
    assert "300 updates in" in capsys.readouterr().err
    # A second `train` into the same folder must not overwrite the work.
    assert main(["train", "--data", str(toy), "--out", str(run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_sigkill_and_resume_is_bit_exact(toy, tmp_path):
    """Kill the run at random moments (several times), resume each time; the final weights
    must equal those of an uninterrupted run of the same length (docs/pitfalls.md: "Resume").
    The budgeted schedule with a 2-update warmup: every resumed segment's rates depend on the
    budget used when warmup ended, which only the checkpoint can give back."""
    common = [
        "--data",
        str(toy),
        *TINY,
        "schedule=linear",
        "warmup_steps=2",
        "dropout=0.1",
        "ema_decay=0.9",
        "max_steps=160",
        "checkpoint_every_steps=4",
        "eval_every=1000",
        "checkpoint_every_minutes=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(aiayn_cmd("train", "--out", str(full), *common), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    rng = random.Random(0)
    args = aiayn_cmd("train", "--out", str(run), *common)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = newest_step(run)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if newest_step(run) > seen:  # at least one new checkpoint: kill somewhere after
                time.sleep(rng.uniform(0.0, 0.2))
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait()
        args = aiayn_cmd("train", "--resume", str(run))
    subprocess.run(args, check=True, env=env, capture_output=True)
    assert kills == 3, "the run finished before it could be killed: make it longer"
    whole, resumed = (ckpt.load_checkpoint(r / "checkpoints" / "step_00000160.pt") for r in (full, run))
    assert max_diff(whole["model"], resumed["model"]) == 0.0
    assert max_diff(whole["ema"], resumed["ema"]) == 0.0  # the moving average resumes too


def test_moving_average_is_validated_and_saved_and_leaves_training_alone(toy, tmp_path):
    common = [*TINY, "dropout=0.1", "max_steps=30", "eval_every=10", "checkpoint_every_steps=10"]
    common += ["checkpoint_every_minutes=0"]
    for name, extra in (("plain", []), ("ema", ["ema_decay=0.9"])):
        assert main(["train", "--data", str(toy), "--out", str(tmp_path / name), *common, *extra]) == 0
    plain, ema = (ckpt.load_checkpoint(tmp_path / n / "checkpoints" / "step_00000030.pt") for n in ("plain", "ema"))
    assert max_diff(plain["model"], ema["model"]) == 0.0  # the average never feeds back
    assert "ema" not in plain and ema["ema"].keys() == ema["model"].keys()
    assert max_diff(ema["model"], ema["ema"]) > 0.0
    with (tmp_path / "ema" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["valid_loss"]]
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 30]  # the evaluations, then the final row
    assert all(r["ema_valid_loss"] and float(r["ema_valid_loss"]) != float(r["valid_loss"]) for r in rows)


def test_late_dropout_trains_the_first_epochs_without_dropout_then_with_it(toy, tmp_path, capsys):
    """dropout_from_epoch=1 is, bit for bit, an epoch trained with dropout=0.0 and then resumed with
    dropout=0.1 (the switch by hand); and it differs from both dropout 0.0 and 0.1 throughout."""
    common = ["--data", str(toy), *TINY, "eval_every=1000", "checkpoint_every_minutes=0", "checkpoint_every_steps=1000"]

    def run(name: str, *extra: str) -> Path:
        assert main(["train", "--out", str(tmp_path / name), *common, *extra]) == 0
        return tmp_path / name

    first = run("first", "dropout=0.0", "max_epochs=1")  # stops where epoch 1 begins
    epoch = newest_step(first)
    steps = f"max_steps={epoch + 6}"
    assert main(["train", "--resume", str(first), "dropout=0.1", "max_epochs=0", steps]) == 0
    capsys.readouterr()
    late = run("late", "dropout=0.1", "dropout_from_epoch=1", steps)
    said = capsys.readouterr()
    assert "dropout 0.1 from epoch 1" in said.out + said.err
    never, always = run("never", "dropout=0.0", steps), run("always", "dropout=0.1", steps)
    final = {r: weights(r / "checkpoints" / f"step_{epoch + 6:08d}.pt") for r in (first, late, never, always)}
    assert max_diff(final[late], final[first]) == 0.0
    assert max_diff(final[late], final[never]) > 0.0 and max_diff(final[late], final[always]) > 0.0


def test_two_gloo_ranks_equal_one_process(toy, tmp_path):
    """torchrun with 2 CPU ranks (gloo) vs 1 process accumulating the same 2 batches per update
    (docs/pitfalls.md: "DDP normalisation": the loss is normalised by the global token count)."""
    common = ["--data", str(toy), *TINY, "max_steps=15", "eval_every=1000", "checkpoint_every_steps=15"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "aiayn",
    ]
    subprocess.run(
        [*torchrun, "train", "--out", str(tmp_path / "ddp"), *common],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        aiayn_cmd("train", "--out", str(tmp_path / "one"), *common, "update_tokens=1024"),
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    diff = max_diff(
        weights(tmp_path / "ddp" / "checkpoints" / "step_00000015.pt"),
        weights(tmp_path / "one" / "checkpoints" / "step_00000015.pt"),
    )
    assert diff < 1e-5


def test_corrupt_checkpoint_is_named_and_resume_falls_back(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(toy),
                "--out",
                str(run),
                *TINY,
                "max_steps=20",
                "eval_every=1000",
                "checkpoint_every_steps=10",
                "keep_last=5",
            ]
        )
        == 0
    )
    newest = run / "checkpoints" / "step_00000020.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(AiaynError, match="step_00000020.pt: checkpoint is truncated or corrupt"):
        ckpt.load_checkpoint(newest)
    path, state = ckpt.latest_good_checkpoint(run)
    assert path.name == "step_00000010.pt" and state["step"] == 10
    assert "falling back" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "max_steps=20"]) == 0
    assert ckpt.load_checkpoint(newest)["step"] == 20


def test_average_is_the_mean_in_float64_and_copies_integers(tmp_path):
    states = [{"w": torch.tensor([1.0, 2.0]) * (i + 1), "n": torch.tensor([7], dtype=torch.long)} for i in range(3)]
    for i, s in enumerate(states):
        ckpt.save_checkpoint(ckpt.step_path(tmp_path, (i + 1) * 10), {"model": s, "config": "{}", "step": (i + 1) * 10})
    out = ckpt.average_checkpoints(tmp_path, last=2, out=tmp_path / "avg.pt")
    averaged = ckpt.load_checkpoint(out)
    assert torch.equal(averaged["model"]["w"], torch.tensor([2.5, 5.0]))
    assert averaged["model"]["n"].dtype == torch.long and averaged["model"]["n"].item() == 7
    assert averaged["averaged_steps"] == [20, 30]


def test_nan_losses_skip_updates_then_stop_with_checkpoint_intact(toy, tmp_path, monkeypatch):
    import aiayn.training.step as step_mod
    import aiayn.training.train as train_mod

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(toy),
                "--out",
                str(run),
                *TINY,
                "max_steps=10",
                "eval_every=1000",
                "checkpoint_every_steps=10",
            ]
        )
        == 0
    )
    before = weights(run / "checkpoints" / "step_00000010.pt")
    real = step_mod.label_smoothed_cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target, epsilon):
        loss, nll, n = real(logits, target, epsilon)
        calls["n"] += 1
        return (loss * math.nan, nll, n) if logits.requires_grad else (loss, nll, n)

    monkeypatch.setattr(step_mod, "label_smoothed_cross_entropy", poisoned)
    with pytest.raises(AiaynError, match="NaN/inf"):
        train_mod.train(None, run, overrides=["max_steps=30", "max_bad_steps=3"], resume=True)
    assert max_diff(before, weights(ckpt.list_checkpoints(run)[-1])) == 0.0
    assert ckpt.list_checkpoints(run)[-1].name == "step_00000010.pt"


def test_budget_recipe_decays_to_zero_and_writes_the_tail_checkpoints(toy, tmp_path):
    """recipe=budget with schedule=linear: the rate rises to the peak over warmup, then falls
    linearly from the peak to zero at max_steps, and the last five checkpoints sit in the last
    10 % of the budget (what `aiayn average` averages)."""
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(toy),
                "--out",
                str(run),
                *TINY,
                "recipe=budget",
                "schedule=linear",
                "max_steps=200",
                "warmup_steps=20",
                "lr_scale=1.0",
                "log_every=10",
                "eval_every=1000",
                "checkpoint_every_steps=50",
                "checkpoint_every_minutes=0",
            ]
        )
        == 0
    )
    assert [int(p.stem.split("_")[1]) for p in ckpt.list_checkpoints(run)] == [180, 185, 190, 195, 200]
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["lr"]]
    peak = 32**-0.5 * 20**-0.5  # Eq. 3's peak for d_model 32, warmup 20
    # Logged after update `step`, which used progress (step - 1) / max_steps; warmup ended at
    # update 20, with progress 19 / 200.
    for r in rows:
        step = int(r["step"])
        fall = (1 - (step - 1) / 200) / (1 - 19 / 200)
        expected = peak * step / 20 if step <= 20 else peak * fall
        assert float(r["lr"]) == pytest.approx(expected, rel=1e-9), step
    assert float(rows[-1]["lr"]) == pytest.approx(peak / 181)


def test_time_budget_progress_and_tail_marks():
    from aiayn.training.schedule import budget_progress
    from aiayn.training.train import tail_marks

    t = load_config("small", overrides=["max_minutes=20", "max_steps=1000"]).train
    assert budget_progress(100, 5.0, t) == 0.25  # time runs out first
    assert budget_progress(600, 5.0, t) == 0.6  # steps run out first
    assert budget_progress(100, 25.0, t) == 1.0
    assert tail_marks(0.1, 5) == pytest.approx([0.9, 0.925, 0.95, 0.975])
    assert tail_marks(0.0, 5) == [] and tail_marks(0.1, 1) == []


def test_kernel_caches_are_bounded_unless_the_user_set_them(monkeypatch):
    """bf16 on a CPU: oneDNN kernels made per batch shape must not pile up (docs/performance.md)."""
    from aiayn.training.kernel_caches import LIMITS, bound_kernel_caches

    for name in LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "3")
    bound_kernel_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == LIMITS["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    assert os.environ["LRU_CACHE_CAPACITY"] == "3" and int(LIMITS["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]) <= 64


def test_train_bounds_the_kernel_caches_before_the_first_bf16_matmul(toy, tmp_path, monkeypatch):
    """oneDNN reads its cache sizes once, at its first primitive: the bound must be in force when
    the precision probe runs its first bf16 matmul, which is before any training step's."""
    from aiayn.training import step
    from aiayn.training.kernel_caches import LIMITS
    from aiayn.training.train import train

    for name in LIMITS:
        monkeypatch.delenv(name, raising=False)
    seen = []
    real = step.choose_precision

    def spy(*args, **kwargs):
        seen.append({name: os.environ.get(name) for name in LIMITS})
        return real(*args, **kwargs)

    monkeypatch.setattr(step, "choose_precision", spy)
    overrides = ["threads=1", "valid_bleu_sentences=0", "precision=auto", "max_steps=1", "eval_every=1000"]
    threads = torch.get_num_threads()
    try:
        train(toy, tmp_path / "run", "tiny", overrides=overrides)
    finally:
        torch.set_num_threads(threads)
    assert seen == [LIMITS]


@pytest.mark.parametrize(("late", "probed"), [(4, 0.0), (0, 0.1)])
def test_precision_probe_times_the_steps_the_run_starts_with(late, probed, monkeypatch):
    """Under late dropout (``dropout_from_epoch`` > 0) the first epochs train without dropout, so the
    probe must time steps without it; with dropout from the first update, steps with it."""
    from aiayn.runtime import Runtime
    from aiayn.training import step

    seen = []

    def spy(setting, device, model, batch_tokens, log):
        seen.append({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})
        return None

    monkeypatch.setattr(step, "choose_precision", spy)
    cfg = load_config("tiny", overrides=["dropout=0.1", f"dropout_from_epoch={late}"])
    step.build_training_step(cfg, Runtime(torch.device("cpu")), log=lambda _: None)
    assert seen == [{probed}]

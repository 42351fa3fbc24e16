"""tune.py: averaging kept only when it helps on valid, decoding chosen on valid (never on test)
and then used by translate and evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from toydata import make_toy_data

from aiayn.cli import main
from aiayn.config import AiaynError
from aiayn.data.cmudict import prepare_cmudict
from aiayn.data.corpus import read_split
from aiayn.data.synthetic import prepare_synthetic
from aiayn.evaluation import tune
from aiayn.evaluation.evaluate import corpus_scores
from aiayn.evaluation.tune import Setting, choose_average, grid
from aiayn.inference.translate import Translator
from aiayn.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--preset", "tiny", "threads=1", "valid_bleu_sentences=0", "precision=fp32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A toy data folder and a tiny model trained on it for 250 updates (BLEU well above 0)."""
    root = tmp_path_factory.mktemp("tune")
    data = make_toy_data(root, pairs=2000)
    run = root / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                *TINY,
                "max_steps=250",
                "eval_every=1000",
                "checkpoint_every_steps=50",
            ]
        )
        == 0
    )
    return data, run


def copy_run(run: Path, to: Path, weights: list[dict]) -> Path:
    """A run folder with ``run``'s tokenizer, run.json and config, and one checkpoint per ``weights``."""
    to.mkdir()
    for name in ("spm.model", "spm.vocab", "run.json"):
        (to / name).write_bytes((run / name).read_bytes())
    config = ckpt.load_checkpoint(ckpt.list_checkpoints(run)[-1])["config"]
    for i, w in enumerate(weights, 1):
        ckpt.save_checkpoint(ckpt.step_path(to, i * 10), {"model": w, "config": config, "step": i * 10})
    return to


def noisy(weights: dict, scale: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in weights.items()
    }


def test_grid_lists_each_setting_once():
    assert grid((1, 4), ("gnmt", "none"), (0.6, 1.0)) == [
        Setting(1, "none", 0.0),
        Setting(4, "gnmt", 0.6),
        Setting(4, "gnmt", 1.0),
        Setting(4, "none", 0.0),
    ]


def test_average_that_loses_on_valid_is_not_kept(trained, tmp_path, capsys):
    data, run = trained
    last = ckpt.load_checkpoint(ckpt.list_checkpoints(run)[-1])["model"]
    # Four random models, then the trained one: their mean is far worse than the last checkpoint.
    torch.manual_seed(1)
    folder = copy_run(run, tmp_path / "run", [noisy(last, 1.0, s) for s in range(4)] + [last])
    assert main(["average", str(folder), "--last", "5"]) == 0
    out = capsys.readouterr()
    assert "holds the last checkpoint (step 50) instead" in out.out
    saved = ckpt.load_checkpoint(folder / "averaged.pt")
    assert all(torch.equal(saved["model"][k], last[k]) for k in last)
    selection = json.loads(saved["selection"])
    assert (
        selection["selected"] == "last" and selection["valid"]["last"]["bleu"] > selection["valid"]["average"]["bleu"]
    )
    # --no-compare keeps the average whatever it scores: the plain §6.1 mean.
    assert main(["average", str(folder), "--last", "5", "--no-compare"]) == 0
    mean = ckpt.load_checkpoint(folder / "averaged.pt")["model"]
    expected = ckpt.average_state_dicts([noisy(last, 1.0, s) for s in range(4)] + [last])
    assert all(torch.equal(mean[k], expected[k]) for k in last)


def test_average_that_wins_on_valid_is_kept(trained, tmp_path):
    data, run = trained
    last = ckpt.load_checkpoint(ckpt.list_checkpoints(run)[-1])["model"]
    # Five independently perturbed copies: averaging cancels most of the noise.
    folder = copy_run(run, tmp_path / "run", [noisy(last, 0.15, s) for s in range(5)])
    found = choose_average(folder, 5, log=lambda *_: None)
    assert found["selected"] == "average", found["valid"]
    assert found["valid"]["average"]["bleu"] >= found["valid"]["last"]["bleu"]
    assert found["averaged_steps"] == [10, 20, 30, 40, 50]


def test_moving_average_that_wins_on_valid_is_kept(trained, tmp_path, capsys):
    """A run trained with ema_decay: its last checkpoint's moving average is a third candidate."""
    data, run = trained
    last = ckpt.load_checkpoint(ckpt.list_checkpoints(run)[-1])["model"]
    folder = copy_run(run, tmp_path / "run", [noisy(last, 1.0, s) for s in range(5)])
    newest = ckpt.list_checkpoints(folder)[-1]
    ckpt.save_checkpoint(newest, {**ckpt.load_checkpoint(newest), "ema": last})
    assert main(["average", str(folder), "--last", "5"]) == 0
    assert "the moving average of the weights scored best on valid" in capsys.readouterr().out
    saved = ckpt.load_checkpoint(folder / "averaged.pt")
    assert all(torch.equal(saved["model"][k], last[k]) for k in last)
    selection = json.loads(saved["selection"])
    assert selection["selected"] == "ema" and set(selection["valid"]) == {"average", "last", "ema"}
    assert saved["averaged_steps"] == [50]


def test_tune_decoding_picks_the_best_on_valid_and_translate_uses_it(trained, tmp_path, capsys):
    """Tuned on a copy of the data whose test files are folders, which no read can get through
    (root's included): decoding is never chosen on the test split."""
    data, run = trained
    blind = tmp_path / "data"
    shutil.copytree(data, blind)
    tests = sorted(blind.glob("test.*"))
    assert len(tests) >= 2  # both sides (and test.tsv when the corpus has references)
    for path in tests:
        path.unlink()
        path.mkdir()
    with pytest.raises(AiaynError, match="is a folder, expected a text file"):  # the control
        read_split(blind, "test")
    assert (
        main(
            [
                "tune-decoding",
                "--model",
                str(run),
                "--data",
                str(blind),
                "--beams",
                "1,3",
                "--penalties",
                "gnmt,fairseq",
                "--alphas",
                "0,2.5",
                "--sentences",
                "60",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "<- best" in printed and "len ratio" in printed
    found = json.loads((run / "decoding.json").read_text())
    assert len(found["grid"]) == 1 + 2 * 2
    best = max(r["bleu"] for r in found["grid"])
    assert found["valid_bleu"] == best
    # The stored BLEU is what an independent evaluation of the valid subset with that setting gives.
    translator = Translator.load(run)
    d = translator.config.decode
    assert (d.beam_size, d.length_penalty, d.alpha) == (found["beam_size"], found["length_penalty"], found["alpha"])
    src, ref = read_split(data, "valid")
    hyps = [n[0].text for n in translator.translate(src[:60])]
    assert round(corpus_scores(hyps, ref[:60])["bleu"], 2) == best
    plain = Translator.load(run, use_tuned=False).config.decode
    assert (plain.beam_size, plain.length_penalty, plain.alpha) == (4, "gnmt", 0.6)


def test_tune_decoding_reports_both_stopping_rules(trained):
    """At the chosen beam setting, both rules are scored and timed, and the default rule's BLEU is
    the grid's; greedy search gets no comparison."""
    data, run = trained
    found = tune.tune_decoding(
        run, data=data, beams=(3,), penalties=("fairseq",), alphas=(1.0,), sentences=40, write=False, log=lambda _: None
    )
    stops = found["stops"]
    assert set(stops) == {"bound", "finished"}
    assert stops["bound"]["bleu"] == found["grid"][0]["bleu"] == found["valid_bleu"]
    assert all(r["seconds"] > 0 and 0 <= r["bleu"] <= 100 for r in stops.values())
    line = tune.format_stops(stops)
    assert "bound (the default)" in line and "--stop finished" in line
    greedy = tune.tune_decoding(
        run, data=data, beams=(1,), penalties=("none",), alphas=(0.0,), sentences=10, write=False, log=lambda _: None
    )
    assert greedy["stops"] is None  # greedy search has no stopping rule to choose


def test_tune_decoding_errors_are_one_line(trained, tmp_path, capsys):
    data, run = trained
    for args, fragment in (
        (["--beams", "0"], "beam size must be positive"),
        (["--beams", "a,b"], "--beams: expected comma-separated numbers"),
        (["--penalties", "wu"], "unknown length penalty 'wu'"),
    ):
        assert main(["tune-decoding", "--model", str(run), "--dry-run", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err, err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "decoding.json").write_text("{")
    for name in ("spm.model", "spm.vocab"):
        (bad / name).write_bytes((run / name).read_bytes())
    (bad / "model.pt").write_bytes(ckpt.list_checkpoints(run)[-1].read_bytes())
    assert (
        main(
            ["translate", "--model", str(bad / "model.pt")],
        )
        == 2
    )
    assert "decoding.json: not a decoding file" in capsys.readouterr().err


# ---------------------------------------------------------------- tasks judged by their own metric


class Scripted:
    """A translator whose share of right outputs depends on the setting: all with beam 6,
    fairseq, α 1.0; half with the paper's; a fifth with any other."""

    tokenizer = None

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def translate(self, sources, progress=False, beam_size=4, alpha=0.6, length_penalty="gnmt", stop=None):
        setting = (beam_size, length_penalty, alpha)
        share = {(6, "fairseq", 1.0): 1.0, (4, "gnmt", 0.6): 0.5}.get(setting, 0.2)
        right = round(share * len(sources))
        return [[SimpleNamespace(text=self.answers[s] if i < right else "Z Z Z")] for i, s in enumerate(sources)]


def blind_run(data: Path, tmp_path: Path, monkeypatch, answers: dict[str, str]) -> Path:
    """A run folder on ``data`` whose test files are folders (never read), decoded by ``Scripted``."""
    for path in data.glob("test.*"):
        path.unlink()
        path.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data_dir": str(data)}))
    monkeypatch.setattr(tune, "resolve_model_path", lambda path: run / "model.pt")
    monkeypatch.setattr(tune.Translator, "load", lambda *a, **k: Scripted(answers))
    return run


def test_tune_decoding_picks_the_lowest_wer_for_g2p(tmp_path, monkeypatch):
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(40)]
    (tmp_path / "dict.txt").write_text("".join(f"{w} W ER{i % 3} D\n" for i, w in enumerate(words)))
    prepare_cmudict(tmp_path / "g2p", file=tmp_path / "dict.txt", valid_words=10, test_words=5)
    src, ref = read_split(tmp_path / "g2p", "valid")
    run = blind_run(tmp_path / "g2p", tmp_path, monkeypatch, dict(zip(src, ref)))
    found = tune.tune_decoding(run, beams=(4, 6), alphas=(0.6, 1.0), sentences=0, log=lambda *_: None)
    assert (found["beam_size"], found["length_penalty"], found["alpha"]) == (6, "fairseq", 1.0)
    assert (found["task"], found["metric"], found["valid_score"]) == ("g2p", "wer", 0.0)
    assert max(r["wer"] for r in found["grid"]) == 80.0 and "valid_bleu" not in found
    assert ckpt.tuned_decoding(run / "model.pt")["beam_size"] == 6  # the file checks as decoding.json


def test_tune_decoding_picks_the_highest_accuracy_for_an_algorithmic_task(tmp_path, monkeypatch):
    prepare_synthetic("reverse", tmp_path / "rev", train=200, held_out=20)
    src, ref = read_split(tmp_path / "rev", "valid")
    run = blind_run(tmp_path / "rev", tmp_path, monkeypatch, dict(zip(src, ref)))
    found = tune.tune_decoding(run, beams=(4, 6), alphas=(0.6, 1.0), sentences=0, log=lambda *_: None)
    assert (found["beam_size"], found["length_penalty"], found["alpha"]) == (6, "fairseq", 1.0)
    assert (found["metric"], found["valid_score"]) == ("accuracy", 100.0)
    assert tune.better("g2p", 10.0, 20.0) and tune.better("sort", 20.0, 10.0)

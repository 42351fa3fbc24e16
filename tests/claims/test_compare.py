"""claims/compare.py, ``aiayn compare``: two tiny networks end to end (train, average, tune on valid,
evaluate on test, compare.json, the table, the plots), a finished network not trained again, an
interrupted one resumed; the FLOPs of the LSTM kernel the counter does not know."""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aiayn.claims.compare import LSTM_FLOPS, compare, network_overrides, parse_archs, tokens_and_flops
from aiayn.cli import main
from aiayn.config import AiaynError, load_config
from aiayn.data.batching import BatchStream, tokenized_split
from aiayn.data.corpus import prepare_files
from aiayn.data.symbols import open_tokenizer
from aiayn.runtime import machine
from aiayn.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["max_steps=20", "eval_every=10", "log_every=5", "checkpoint_every_steps=10", "keep_last=2"]
TINY += ["threads=1", "precision=fp32", "valid_bleu_sentences=10"]


def test_compare_two_networks_end_to_end_then_resume(toy_corpus, tmp_path, capsys):
    out = tmp_path / "compare"
    args = ["compare", "--data", str(toy_corpus), "--minutes", "5", "--out", str(out), "--archs", "rnn,conv"]
    args += ["--preset", "tiny", "--sentences", "10", *TINY, "conv:train.lr_scale=0.5"]
    assert main(args) == 0
    lr_scale = {arch: load_config(path=out / arch / "config.yaml").train.lr_scale for arch in ("rnn", "conv")}
    assert lr_scale == {"rnn": load_config("tiny").train.lr_scale, "conv": 0.5}  # conv's own, rnn's the preset's
    summary = json.loads((out / "compare.json").read_text())
    assert list(summary["networks"]) == ["rnn", "conv"] and summary["budget_minutes"] == 5
    for arch, r in summary["networks"].items():
        assert r["arch"] == arch and r["updates"] == 20 and r["parameters"] > 0
        assert r["training_flops"] == pytest.approx(20 * r["target_tokens_per_update"] * r["flops_per_target_token"])
        assert r["target_tokens_per_s"] > 0 and r["valid_ppl"] > 1 and 0 <= r["test_bleu"] <= 100
        assert (out / arch / "averaged.pt").is_file() and (out / arch / "decoding.json").is_file()
    table = (out / "compare.md").read_text()
    assert "| rnn |" in table and "| conv |" in table and table in capsys.readouterr().out
    assert f"on {machine()['cpu']} ({os.cpu_count()} cores)" in table  # the budgets' machine, named
    for stem in ("compare_bleu_minutes", "compare_bleu_flops", "compare_loss_tokens"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.svg").is_file()

    # conv interrupted after its first checkpoint: it resumes from there; rnn is not trained again.
    (out / "conv" / "result.json").unlink()
    (out / "conv" / "averaged.pt").unlink()
    for path in ckpt.list_checkpoints(out / "conv")[1:]:
        path.unlink()
    shutil.rmtree(ckpt.checkpoint_dir(out / "conv") / "best.pt", ignore_errors=True)
    rnn_result = (out / "rnn" / "result.json").read_text()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "rnn is finished" in captured.out and "resuming" in captured.err and "(step 10)" in captured.err
    assert (out / "rnn" / "result.json").read_text() == rnn_result
    assert json.loads((out / "conv" / "result.json").read_text())["updates"] == 20


def test_tokens_of_an_update_are_those_of_the_batches_training_cuts(tmp_path):
    """The run's own batch rule (``data.limit``, ``data.sort``), not a default one: the mean of the
    target tokens (EOS included) over one epoch of the batches ``train`` would make. Sources longer
    than their targets, so that the two ways of counting a batch cut it differently."""
    rng = random.Random(0)
    sources = [" ".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 30))) for _ in range(600)]
    (tmp_path / "train.xx").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "train.yy").write_text("\n".join(s[:3] for s in sources) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    prepare_files(data, src=tmp_path / "train.xx", tgt=tmp_path / "train.yy", vocab_size=20)
    tokenizer = open_tokenizer(data)
    found = {}
    for limit in ("side", "total"):
        cfg = load_config("tiny", overrides=[f"vocab_size={tokenizer.vocab_size}", f"limit={limit}", "sort=target"])
        found[limit], _ = tokens_and_flops(cfg, data, tokenizer)
        _, _, src, tgt = tokenized_split(data, "train", tokenizer)
        stream = BatchStream(src, tgt, cfg.data.batch_tokens, cfg.data.max_len, 1, sort="target", limit=limit)
        batches = [b for _, (_, _, b) in zip(range(len(stream)), stream)]
        assert found[limit] == pytest.approx(sum(b.n_tgt_tokens for b in batches) / len(batches))
    assert found["total"] > 1.5 * found["side"]  # with short targets, counting both sides fits more rows


def test_lstm_kernel_flops_are_counted_as_its_matrix_products():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 6, num_layers=2, batch_first=True)
    x = torch.randn(3, 5, 8)
    with FlopCounterMode(display=False, custom_mapping=LSTM_FLOPS) as counter:
        lstm(x)
    per_position = 2 * 4 * 6 * (8 + 6) + 2 * 4 * 6 * (6 + 6)  # layer 1 reads 8 inputs, layer 2 six
    assert counter.get_total_flops() == 3 * 5 * per_position


def test_unknown_network_is_one_line():
    assert parse_archs("conv, transformer,conv") == ["conv", "transformer"]
    with pytest.raises(AiaynError, match=r"^--archs: unknown network 'lstm' \(choose from transformer, rnn, conv\)$"):
        parse_archs("transformer,lstm")


def test_an_override_prefixed_by_a_network_reaches_that_network_alone():
    got = network_overrides(["threads=1", "conv:lr_scale=1.1", "rnn:train.warmup_steps=100", "seed=2"], ["rnn", "conv"])
    assert got == {
        "rnn": ["threads=1", "train.warmup_steps=100", "seed=2"],
        "conv": ["threads=1", "lr_scale=1.1", "seed=2"],
    }
    assert network_overrides(["config_dir=a:b"], ["conv"]) == {"conv": ["config_dir=a:b"]}  # a colon in a value
    with pytest.raises(AiaynError, match="'lstm' is no network"):
        network_overrides(["lstm:lr_scale=2"], ["rnn"])
    with pytest.raises(AiaynError, match="conv is not compared here; add it to --archs"):
        network_overrides(["conv:lr_scale=2"], ["transformer", "rnn"])


def test_a_misspelt_override_of_the_last_network_fails_before_the_first_trains(toy_corpus, tmp_path):
    out = tmp_path / "compare"
    with pytest.raises(AiaynError, match=r"^compare: conv: .*lr_scael"):
        compare(toy_corpus, 0.01, out, archs=["transformer", "conv"], preset="tiny", overrides=["conv:lr_scael=2"])
    assert not out.exists() or not any(out.iterdir())  # nothing trained, no folder left behind

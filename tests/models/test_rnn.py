"""models/rnn.py, the attentional LSTM baseline: the model contract (tests/archkit.py) and what is
its own, the bidirectional first encoder layer and input feeding."""

from __future__ import annotations

import math
from collections import Counter

import archkit
import pytest
import torch
from modelkit import max_diff

from aiayn.cli import main
from aiayn.config import EOS_ID, load_config
from aiayn.data.corpus import read_split
from aiayn.data.symbols import encode_targets, open_tokenizer
from aiayn.inference.translate import Translator
from aiayn.runtime import setup_runtime
from aiayn.training.checkpoint import latest_good_checkpoint
from aiayn.training.train import Trainer, prepare_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "rnn"
TINY = ["--preset", "tiny", f"model.arch={ARCH}", "threads=1", "precision=fp32", "valid_bleu_sentences=0"]


def test_shapes_and_attention_weights():
    archkit.check_shapes(ARCH, memory_width=32, cross_layers=1)  # tiny: rnn_hidden 32, one attention


def test_padding_never_changes_real_outputs():
    archkit.check_padding(ARCH)


def test_cached_decoding_equals_teacher_forcing_through_reorders():
    archkit.check_cache(ARCH)


def test_beam_search_is_batch_invariant(tmp_path):
    archkit.check_batch_invariance(ARCH, tmp_path)


def test_attention_pictures_show_cross_attention(tmp_path):
    archkit.check_attention_pictures(ARCH, tmp_path, cross_layers=1)


def test_train_resume_average_translate(toy_corpus, tmp_path, capsys):
    archkit.check_round_trip(ARCH, toy_corpus, tmp_path / "run", capsys)


def test_small_is_within_15_percent_of_the_transformer():
    archkit.check_small_size(ARCH)


def test_the_first_encoder_layer_reads_both_directions():
    """Changing a sentence's last token changes the memory at its first position (the backward
    half), and only in its own row."""
    model = archkit.tiny_model(ARCH)
    src, src_mask, _, _ = archkit.batch()
    memory, _ = model.encode(src, src_mask)
    changed = src.clone()
    changed[1, 4] = 4 if src[1, 4] != 4 else 5  # row 1 has 5 real tokens
    other, _ = model.encode(changed, src_mask)
    assert max_diff(other[1, 0], memory[1, 0]) > 1e-6
    assert max_diff(other[[0, 2]], memory[[0, 2]]) == 0


def test_input_feeding_carries_the_previous_attentional_vector():
    """The decoder's state after a step holds h̃, and a different h̃ changes the next logits."""
    model = archkit.tiny_model(ARCH)
    src, src_mask, tgt, _ = archkit.batch()
    memory, _ = model.encode(src, src_mask)
    logits, cache, _ = model.decode(tgt[:, :1], cache=model.init_cache(memory, src_mask))
    assert cache.feed.shape == (3, 32) and cache.feed.abs().sum() > 0
    fed, _, _ = model.decode(tgt[:, 1:2], cache=cache)
    unfed, _, _ = model.decode(
        tgt[:, 1:2], cache=cache.__class__(**{**vars(cache), "feed": torch.zeros_like(cache.feed)})
    )
    assert max_diff(fed, unfed) > 1e-6


def test_output_bias_starts_at_the_add_one_unigram_distribution():
    """With h̃ = 0 the logits are the softmax bias alone; their softmax is the hand-computed
    add-one frequencies of the counts."""
    model = archkit.tiny_model(ARCH)  # vocabulary 64
    counts = torch.zeros(64, dtype=torch.long)
    counts[3], counts[10] = 5, 2  # 7 counted, plus one for each of the 64 ids: 71
    model.init_output_bias(counts)
    probs = model.out_proj(torch.zeros(1, 32, dtype=torch.float64)).softmax(dim=-1)[0]
    assert probs[3].item() == pytest.approx(6 / 71, rel=1e-12)
    assert probs[10].item() == pytest.approx(3 / 71, rel=1e-12)
    assert probs[0].item() == pytest.approx(1 / 71, rel=1e-12)


def test_a_fresh_run_starts_from_the_unigram_and_a_resumed_one_from_its_checkpoint(toy_corpus, tmp_path):
    """The trainer sets the bias from the training targets (counted here with a Counter over the
    tokenized text, EOS once a line) on a new run, and leaves a resumed run's trained bias alone."""
    run = tmp_path / "run"
    cfg = load_config("tiny", overrides=[f"model.arch={ARCH}", "threads=1", "precision=fp32"])
    prepare_run_dir(cfg, toy_corpus, run)
    fresh = Trainer(cfg, toy_corpus, run, setup_runtime(1))
    tokenizer = open_tokenizer(toy_corpus)
    targets = read_split(toy_corpus, "train")[1]
    counted = Counter(i for y in encode_targets(tokenizer, targets) for i in y)
    counted[EOS_ID] += len(targets)
    total = sum(counted.values()) + tokenizer.vocab_size
    bias = fresh.model.out_proj.bias.detach()
    for i in (EOS_ID, *[i for i, _ in counted.most_common(3)], tokenizer.vocab_size - 1):
        assert bias[i].item() == pytest.approx(math.log((counted[i] + 1) / total), rel=1e-5)

    assert main(["train", "--data", str(toy_corpus), "--out", str(tmp_path / "trained"), *TINY, "max_steps=1"]) == 0
    _, state = latest_good_checkpoint(tmp_path / "trained")
    trained = torch.full_like(state["model"]["out_proj.bias"], 0.5)
    state["model"]["out_proj.bias"] = trained
    resumed = Trainer(cfg, toy_corpus, tmp_path / "trained", setup_runtime(1), state)
    assert torch.equal(resumed.model.out_proj.bias.detach(), trained)


def test_a_run_from_before_the_softmax_bias_translates_as_trained_and_refuses_to_resume(toy_corpus, tmp_path, capsys):
    """Such a checkpoint lacks out_proj.bias: it loads with a zero bias (the model it was
    trained as), so it translates as the same weights do with the bias zeroed by hand."""
    run = tmp_path / "old"
    assert main(["train", "--data", str(toy_corpus), "--out", str(run), *TINY, "max_steps=2"]) == 0
    path, state = latest_good_checkpoint(run)
    state["model"]["out_proj.bias"].zero_()
    torch.save(state, path)
    zeroed = Translator.load(path, "cpu").translate(archkit.LINES[:2], beam_size=2)
    del state["model"]["out_proj.bias"]
    torch.save(state, path)
    old = Translator.load(path, "cpu").translate(archkit.LINES[:2], beam_size=2)
    assert [[(t.text, t.score) for t in nb] for nb in old] == [[(t.text, t.score) for t in nb] for nb in zeroed]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "max_steps=4"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written before the LSTM had a softmax bias" in err[0]

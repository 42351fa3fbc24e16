"""models/rnn.py, the attentional LSTM baseline: the model contract (tests/archkit.py) and what is
its own, the bidirectional first encoder layer and input feeding."""

from __future__ import annotations

import archkit
import pytest
import torch
from modelkit import max_diff

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "rnn"


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

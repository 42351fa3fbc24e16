"""models/conv.py, the ConvS2S baseline: the model contract (tests/archkit.py) and what is its
own, the causal decoder and its window of k − 1 inputs."""

from __future__ import annotations

import archkit
import pytest
from modelkit import max_diff

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "conv"


def test_shapes_and_attention_weights():
    archkit.check_shapes(ARCH, memory_width=64, cross_layers=2)  # tiny: z | z + e, 2 layers that attend


def test_padding_never_changes_real_outputs():
    archkit.check_padding(ARCH)


def test_cached_decoding_equals_teacher_forcing_through_reorders():
    archkit.check_cache(ARCH)


def test_beam_search_is_batch_invariant(tmp_path):
    archkit.check_batch_invariance(ARCH, tmp_path)


def test_attention_pictures_show_cross_attention(tmp_path):
    archkit.check_attention_pictures(ARCH, tmp_path, cross_layers=2)


def test_train_resume_average_translate(toy_corpus, tmp_path, capsys):
    archkit.check_round_trip(ARCH, toy_corpus, tmp_path / "run", capsys)


def test_small_is_within_15_percent_of_the_transformer():
    archkit.check_small_size(ARCH)


def test_the_decoder_sees_no_later_position():
    """Teacher forcing computes every position at once: changing target token t changes no
    logits before t, and does change those from t on."""
    model = archkit.tiny_model(ARCH)
    src, src_mask, tgt, _ = archkit.batch()
    logits = model(src, tgt, src_mask)
    changed = tgt.clone()
    changed[:, 3] = (tgt[:, 3] + 1 - 4) % (archkit.V - 4) + 4
    other = model(src, changed, src_mask)
    assert max_diff(other[:, :3], logits[:, :3]) == 0
    assert max_diff(other[:, 3], logits[:, 3]) > 1e-6


def test_the_cache_holds_the_last_k_minus_1_inputs_of_each_layer():
    model = archkit.tiny_model(ARCH)
    src, src_mask, tgt, _ = archkit.batch()
    memory, _ = model.encode(src, src_mask)
    cache = model.init_cache(memory, src_mask)
    assert [w.shape for w in cache.windows] == [(3, 2, 32)] * 2 and cache.length == 0  # k = 3, C = 32
    _, cache, _ = model.decode(tgt[:, :4], cache=cache)
    assert cache.length == 4 and [w.shape for w in cache.windows] == [(3, 2, 32)] * 2

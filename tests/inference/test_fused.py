"""fused.py: the fused decoding step computes Transformer.decode's function, step by step, through
beam reorders and sentences leaving the batch, for every norm placement, position kind and tying;
int8 fused layers agree with the int8 model; a Translator never decodes with stale copies."""

from __future__ import annotations

import pytest
import torch
from modelkit import make_model, max_diff, random_batch, randomize_

from aiayn.config import AiaynError
from aiayn.inference.fused import FusedDecoder, _Map
from aiayn.inference.quantize import pack_model, quantize_model
from aiayn.inference.translate import Translator
from aiayn.models.layers import ONEDNN_LINEAR

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = [5, 3, 7]  # a padded batch of three sentences


def beams_of(cache, beam: int):
    """The cache with each sentence's row repeated ``beam`` times, as beam search starts."""
    return cache.reorder(torch.arange(cache.rows).repeat_interleave(beam))


def run_both(model, fused, *, beam: int, steps: int, seed: int = 0):
    """Decode ``steps`` tokens with Transformer.decode and with FusedDecoder.step from twin caches,
    feeding both the same random tokens and reordering both the same way (random beam parents,
    then the middle sentence leaves); yield the logits and caches of each step."""
    src, mask = random_batch(LENGTHS, 7)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        memory, _ = model.encode(src, mask)
        ref = beams_of(model.init_cache(memory, mask, capacity=4), beam)
        ours = beams_of(model.init_cache(memory, mask, capacity=4), beam)
        for step in range(steps):
            tokens = torch.randint(4, model.cfg.vocab_size, (ref.rows,), generator=g)
            logits, ref, _ = model.decode(tokens[:, None], cache=ref)
            fused_logits, ours = fused.step(tokens, ours)
            yield step, logits[:, 0], fused_logits, ref, ours
            sentences = ref.rows // beam
            if step == 2:  # sentence 1 leaves the batch
                keep = [s for s in range(sentences) if s != 1]
            else:
                keep = list(range(sentences))
            index = torch.cat([s * beam + torch.randint(0, beam, (beam,), generator=g) for s in keep])
            ref, ours = ref.reorder(index), ours.reorder(index)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm": "pre"},
        {"positional": "learned"},
        {"tie_embeddings": "decoder"},
        {"tie_embeddings": "none", "norm": "pre"},
        {"n_heads": 2, "d_k": 8, "d_v": 12},
    ],
)
@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("min_macs", [1, 2**62], ids=["packed", "unpacked"])
def test_fused_step_equals_decode_at_every_step(overrides, beam, min_macs, monkeypatch):
    """Logits and the cache's keys and values equal up to float32 rounding (relative 1e-5) at every
    step; the cache grows past its capacity on the way (4 positions reserved, 6 decoded). Every
    linear map runs packed (the FFN's ReLU inside oneDNN's matmul), or none does: a spy on oneDNN's
    matmul records which packed weights the step used."""
    monkeypatch.setattr("aiayn.inference.quantize.PACKED_MIN_MACS", min_macs)
    used = set()

    def spy(x, weight, *args):
        used.add(id(weight))
        return ONEDNN_LINEAR(x, weight, *args)

    monkeypatch.setattr("aiayn.inference.fused.ONEDNN_LINEAR", spy)
    model = make_model(seed=3, **overrides)
    randomize_(model, seed=5)  # biases and norm gains too, which start at 0 and 1
    fused = FusedDecoder(model, pack_model(model))
    maps = [m for layer in fused.layers for m in vars(layer).values() if isinstance(m, _Map)] + [fused.out]
    assert len(maps) == 6 * len(fused.layers) + 1 and all(m.packed is not None for m in maps)
    for _, logits, fused_logits, ref, ours in run_both(model, fused, beam=beam, steps=6):
        assert fused_logits.shape == logits.shape
        assert torch.allclose(fused_logits, logits, rtol=1e-5, atol=1e-5)
        assert ours.length == ref.length and ours.rows == ref.rows
        for (k, v), (k2, v2) in zip(ref.filled(), ours.filled()):
            assert torch.allclose(k2, k, rtol=1e-5, atol=1e-6) and torch.allclose(v2, v, rtol=1e-5, atol=1e-6)
    assert used == ({id(m.packed) for m in maps} if min_macs == 1 else set())


def test_int8_fused_step_agrees_with_the_int8_model():
    """Stacking Q/K/V and folding 1/√d_k (a power of two here) into W^Q change no int8 scale: the
    fused int8 step computes what the int8 model's layers compute."""
    model = make_model(seed=4)
    quantized = quantize_model(model, "int8")
    fused = FusedDecoder(model, quantized, quantize="int8")
    for _, logits, fused_logits, *_ in run_both(quantized, fused, beam=2, steps=4):
        assert max_diff(fused_logits, logits) < 1e-4 * logits.abs().max().item()


def test_fused_step_refuses_mismatched_rows_and_positions_beyond_max_len():
    model = make_model(seed=5, max_len=3)
    fused = FusedDecoder(model, pack_model(model))
    src, mask = random_batch([2, 2], 2)
    with torch.no_grad():
        cache = model.init_cache(model.encode(src, mask)[0], mask)
        with pytest.raises(ValueError, match="3 rows of new tokens for a cache of 2 rows"):
            fused.step(torch.tensor([4, 5, 6]), cache)
        for _ in range(3):
            _, cache = fused.step(torch.tensor([4, 5]), cache)
        with pytest.raises(AiaynError, match="exceeds the model's max_len=3"):
            fused.step(torch.tensor([4, 5]), cache)


class Pieces:
    """A tokenizer of space-separated ids ("7 12 9"), for a Translator over a random model."""

    vocab_size = 50

    def encode_batch(self, lines):
        return [[int(w) for w in line.split()] for line in lines]

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_translator_notices_changed_weights_and_stops_using_the_fused_copy():
    """After an in-place update of the model (training goes on), translations are those of the
    updated weights, not of the copies made when the Translator was built."""
    from aiayn.config import Config

    model = make_model(seed=6)
    cfg = Config(model=model.cfg)
    lines = ["5 9 13 22 7", "8 8 31", "40 2 17 11"]
    translator = Translator(model, Pieces(), cfg)
    assert translator.fused is not None and translator.fused.current()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(1.5)
    assert not translator.fused.current()
    fresh = Translator(model, Pieces(), cfg)
    for beam in (1, 3):
        assert [t[0].tokens for t in translator.translate(lines, beam_size=beam)] == [
            t[0].tokens for t in fresh.translate(lines, beam_size=beam)
        ]


def test_translator_of_a_model_made_under_inference_mode():
    """Tensors made under torch.inference_mode have no version counter: such a model (which no
    optimizer can change) still gets the packed and fused copies and translates as usual."""
    from aiayn.config import Config

    lines = ["5 9 13 22 7", "8 8 31"]
    expected = [
        t[0].tokens
        for t in Translator(make_model(seed=7), Pieces(), Config(model=make_model(seed=7).cfg)).translate(lines)
    ]
    with torch.inference_mode():
        model = make_model(seed=7)
    translator = Translator(model, Pieces(), Config(model=model.cfg))
    assert translator.fused.current()
    assert [t[0].tokens for t in translator.translate(lines)] == expected

"""The model contract of docs/architecture.md, checked on any ``model.arch``: shapes, padding,
cached decoding against teacher forcing (through reorders), beam search through ``Translator``
alone and in a padded batch, and a tiny train → resume → average → translate round trip.
tests/models/test_rnn.py and test_conv.py run each on their network."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from modelkit import max_diff, random_batch
from toydata import train_toy_tokenizer

from aiayn.cli import main
from aiayn.config import BOS_ID, AiaynError, preset
from aiayn.evaluation.visualize import attention_figures, sentence_attention
from aiayn.inference.translate import Translator
from aiayn.models.build import build_model
from aiayn.models.transformer import count_parameters

V = 64  # the tiny preset's vocabulary
LINES = [
    "en el principio",
    "dios creo la luz y el agua",
    "la noche",
    "el mar y la tierra y los cielos y el dia",
    "luz",
    "agua agua mar",
]


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    cfg = preset("tiny")
    cfg.model.arch = arch
    torch.manual_seed(seed)
    return build_model(cfg.model).to(dtype).eval()


def batch(seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Sources of lengths 9, 5, 2 and targets (BOS + y) of lengths 6, 3, 4, right-padded."""
    src, src_mask = random_batch([9, 5, 2], 9, vocab=V, seed=seed)
    tgt, tgt_mask = random_batch([6, 3, 4], 6, vocab=V, seed=seed + 1)
    tgt[:, 0] = BOS_ID
    return src, src_mask, tgt, tgt_mask


def check_shapes(arch: str, memory_width: int, cross_layers: int) -> None:
    model = tiny_model(arch)
    src, src_mask, tgt, tgt_mask = batch()
    memory, enc = model.encode(src, src_mask, need_weights=True)
    assert memory.shape == (3, 9, memory_width) and enc == []
    logits, cache, w = model.decode(tgt, memory=memory, src_mask=src_mask, need_weights=True)
    assert logits.shape == (3, 6, V) and cache is None and w["self"] == []
    assert [x.shape for x in w["cross"]] == [(3, 1, 6, 9)] * cross_layers
    for x in w["cross"]:  # each query's weights: a distribution over the real source tokens only
        assert torch.allclose(x.sum(-1), torch.ones(3, 1, 6, dtype=x.dtype))
        assert x.masked_select(~src_mask[:, None, None, :]).abs().max() == 0
    assert model(src, tgt, src_mask).shape == (3, 6, V)
    assert model(src, tgt, src_mask, tgt_mask).shape == (int(tgt_mask.sum()), V)


def check_padding(arch: str) -> None:
    """Other ids under the padding, and extra padding columns, change no real output (float64)."""
    model = tiny_model(arch)
    src, src_mask, tgt, tgt_mask = batch()
    memory, _ = model.encode(src, src_mask)
    logits = model(src, tgt, src_mask)
    noisy = torch.where(src_mask, src, torch.randint(4, V, src.shape, generator=torch.Generator().manual_seed(3)))
    assert max_diff(model.encode(noisy, src_mask)[0][src_mask], memory[src_mask]) < 1e-12
    assert max_diff(model(noisy, tgt, src_mask)[tgt_mask], logits[tgt_mask]) < 1e-12
    wide_src, wide_mask = F.pad(src, (0, 4)), F.pad(src_mask, (0, 4), value=False)
    assert max_diff(model.encode(wide_src, wide_mask)[0][:, :9][src_mask], memory[src_mask]) < 1e-12
    wide_logits = model(wide_src, F.pad(tgt, (0, 3)), wide_mask)
    assert max_diff(wide_logits[:, :6][tgt_mask], logits[tgt_mask]) < 1e-12


def check_cache(arch: str) -> None:
    """Decoding one token at a time with the cache gives, at every position, the teacher-forced
    logits of each row's own prefix (float64), through a reorder into two beams per sentence
    that then read different tokens, and one dropping a sentence and swapping two beams."""
    model = tiny_model(arch)
    src, src_mask, tgt, _ = batch()
    memory, _ = model.encode(src, src_mask)
    cache = model.init_cache(memory, src_mask, capacity=6)
    sentences, prefixes = torch.arange(3), tgt.clone()  # per decoder row: its sentence, its tokens
    for t in range(6):
        if t == 2:
            index = torch.tensor([0, 0, 1, 1, 2, 2])
            sentences, prefixes, cache = sentences[index], prefixes[index], cache.reorder(index)
            prefixes[1::2, 2:] = torch.randint(4, V, (3, 4), generator=torch.Generator().manual_seed(5))
        if t == 4:
            index = torch.tensor([3, 2, 4, 5])
            sentences, prefixes, cache = sentences[index], prefixes[index], cache.reorder(index)
        step, cache, _ = model.decode(prefixes[:, t : t + 1], cache=cache)  # (N, 1, V)
        full, _, _ = model.decode(prefixes, memory=memory[sentences], src_mask=src_mask[sentences])
        assert max_diff(step[:, 0], full[:, t]) < 1e-12, f"position {t}"
    assert cache.rows == 4


def check_batch_invariance(arch: str, tmp_path: Path) -> None:
    """Beam search through ``Translator``: a sentence alone = the same sentence in a padded batch."""
    model = tiny_model(arch, dtype=torch.float32)
    with torch.no_grad():  # peaked distributions: no near-ties for the beams to break differently
        model.out_proj.weight.mul_(4)
    cfg = preset("tiny")
    cfg.model.arch = arch
    translator = Translator(model, train_toy_tokenizer(tmp_path), cfg, device="cpu")
    for beam in (4, 1):
        together = translator.translate(LINES, beam_size=beam, nbest=min(beam, 2))
        assert len({t[0].text for t in together}) > 2  # different inputs, different outputs
        for line, mine in zip(LINES, together):
            alone = translator.translate([line], beam_size=beam, nbest=min(beam, 2))[0]
            assert [t.tokens for t in alone] == [t.tokens for t in mine]
            assert [t.score for t in alone] == pytest.approx([t.score for t in mine], abs=1e-4)


def check_attention_pictures(arch: str, tmp_path: Path, cross_layers: int) -> None:
    """The pictures draw encoder–decoder attention alone (one head); asking for self-attention
    is a one-line error."""
    cfg = preset("tiny")
    cfg.model.arch = arch
    translator = Translator(tiny_model(arch, dtype=torch.float32), train_toy_tokenizer(tmp_path), cfg, device="cpu")
    maps = sentence_attention(translator, "en el principio", beam_size=2)
    assert maps.encoder.shape[0] == maps.decoder.shape[0] == 0
    assert maps.cross.shape == (cross_layers, 1, len(maps.target), len(maps.source))
    assert sorted(attention_figures(maps, kind="cross")) == [
        "attention_cross",
        f"attention_lines_cross_layer{cross_layers}",
    ]
    with pytest.raises(AiaynError, match="^this model has no encoder attention .*; use --kind cross$"):
        attention_figures(maps, kind="encoder")


def check_round_trip(arch: str, data: Path, run: Path, capsys) -> None:
    """train (tiny, seconds), resume it, average, then translate in float32 and int8."""
    tiny = ["--preset", "tiny", f"model.arch={arch}", "threads=1", "precision=fp32", "valid_bleu_sentences=0"]
    args = ["max_steps=20", "eval_every=10", "checkpoint_every_steps=10", "log_every=5"]
    assert main(["train", "--data", str(data), "--out", str(run), *tiny, *args]) == 0
    assert main(["train", "--resume", str(run), "max_steps=30"]) == 0
    assert main(["average", str(run), "--last", "2", "--no-compare"]) == 0
    capsys.readouterr()
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["valid_loss"]]
    assert int(rows[-1]["step"]) == 30 and (run / "averaged.pt").is_file()  # resumed at 20 to 30, averaged
    assert float(rows[-1]["valid_loss"]) < float(rows[0]["valid_loss"])
    for quantize in (None, "int8"):
        translator = Translator.load(run, "cpu", quantize=quantize)
        assert translator.fused is None and translator.config.model.arch == arch
        assert [len(t) for t in translator.translate(LINES[:2], beam_size=2, nbest=2)] == [2, 2]


def check_small_size(arch: str) -> None:
    """``small``'s sizes for this network make about the Transformer's parameters (±15 %)."""
    cfg = preset("small")
    with torch.device("meta"):
        transformer = count_parameters(build_model(cfg.model))
        cfg.model.arch = arch
        mine = count_parameters(build_model(cfg.model))
    assert transformer == 7_577_600
    assert abs(mine / transformer - 1) <= 0.15, f"{arch}: {mine:,} parameters"

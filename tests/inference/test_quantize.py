"""quantize.py: int8 linear layers approximate float32 ones, the tied output projection keeps
working, and int8 translations score as float32 ones do (BLEU within 0.5 on a trained toy model);
float32 layers packed for oneDNN compute nn.Linear's function, share the model's parameters and
never use a stale packed weight."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aiayn.cli import main
from aiayn.config import AiaynError, load_config
from aiayn.data.corpus import read_split
from aiayn.evaluation.evaluate import corpus_scores
from aiayn.inference.quantize import (
    ONEDNN_REORDER,
    Int8Linear,
    PackedLinear,
    check_quantization,
    pack_model,
    quantize_model,
)
from aiayn.inference.translate import Translator
from aiayn.models.layers import Linear
from aiayn.models.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_approximates_the_float_layer(bias: bool):
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=bias)
    x = torch.randn(7, 3, 64)
    with torch.no_grad():
        ref, out = linear(x), Int8Linear(linear)(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()


def test_quantized_copy_keeps_the_original_and_the_shared_embedding():
    torch.manual_seed(0)
    model = Transformer(load_config("tiny").model).eval()
    quantized = quantize_model(model, "int8")
    assert isinstance(model.out_proj, nn.Linear) and model.out_proj.weight is model.decoder.embedding.tokens.weight
    assert isinstance(quantized.out_proj, Int8Linear) and isinstance(quantized.decoder.layers[0].ffn.w_1, Int8Linear)
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert quantized.encoder.embedding.tokens is quantized.decoder.embedding.tokens  # still float32, still shared
    src = torch.randint(4, 64, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        ref, out = model(src, src, mask), quantized(src, src, mask)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_int8_translations_score_as_float32_ones(toy_run, toy_corpus):
    """On the trained toy model (BLEU about 80): BLEU of int8 within 1.5 of float32 (beam 4, 100
    test sentences: one sentence is worth about 1), and int8 outputs close to float32's (BLEU of
    one against the other); at d_model 32 a weight's int8 rounding weighs more than in real models."""
    sources, references = (x[:100] for x in read_split(toy_corpus, "test"))
    fp32 = Translator.load(toy_run, "cpu")
    int8 = Translator.load(toy_run, quantize="int8")
    assert int8.device.type == "cpu" and int8.quantize == "int8"
    ours = [t[0].text for t in fp32.translate(sources)]
    theirs = [t[0].text for t in int8.translate(sources)]
    bleu_fp32, bleu_int8 = corpus_scores(ours, references)["bleu"], corpus_scores(theirs, references)["bleu"]
    agreement = corpus_scores(theirs, ours)["bleu"]
    print(f"BLEU fp32 {bleu_fp32:.2f}, int8 {bleu_int8:.2f}; int8 against fp32: {agreement:.1f}")
    assert bleu_fp32 > 50 and abs(bleu_int8 - bleu_fp32) <= 1.5
    assert agreement > 85


def test_quantize_flag_of_the_commands(toy_run, toy_corpus, tmp_path, capsys):
    import json

    from aiayn.serve.app import Explorer

    lines = "\n".join(read_split(toy_corpus, "test")[0][:3]) + "\n"
    (tmp_path / "in.es").write_text(lines, encoding="utf-8")
    (tmp_path / "ref.en").write_text("\n".join(read_split(toy_corpus, "test")[1][:3]) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "translate",
                "--model",
                str(toy_run),
                "--quantize",
                "int8",
                "--input",
                str(tmp_path / "in.es"),
                "--output",
                str(tmp_path / "out.en"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "out.en").read_text(encoding="utf-8").splitlines()) == 3
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(toy_run),
                "--quantize",
                "int8",
                "--src",
                str(tmp_path / "in.es"),
                "--ref",
                str(tmp_path / "ref.en"),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval" / "scores.json").read_text())["quantize"] == "int8"
    explorer = Explorer.load(toy_run, quantize="int8")
    assert explorer.translator.quantize == "int8"
    assert len(explorer.translate({"sentences": ["el que y la"]})["translations"]) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["translate", "--model", str(toy_run), "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_quantization_errors_are_one_line():
    with pytest.raises(AiaynError, match="runs on the CPU only; use --device cpu"):
        check_quantization("int8", "cuda")
    with pytest.raises(AiaynError, match="unknown --quantize 'int4'"):
        check_quantization("int4", "cpu")
    check_quantization(None, "cuda")


needs_onednn = pytest.mark.skipif(ONEDNN_REORDER is None, reason="this PyTorch build has no oneDNN weight packing")


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("rows", "d_in", "d_out", "packed_path"),
    [(1, 64, 96, False), (1, 256, 1024, True), (3, 256, 512, True), (37, 256, 256, True), (2, 256, 256, False)],
)
def test_packed_linear_computes_the_float_layer(bias, rows, d_in, d_out, packed_path, monkeypatch):
    """Either path (packed from 2^18 multiply-adds per call), against nn.Linear's function in float64."""
    import aiayn.inference.quantize

    calls = []
    onednn = aiayn.inference.quantize.ONEDNN_LINEAR
    monkeypatch.setattr(aiayn.inference.quantize, "ONEDNN_LINEAR", lambda *a: calls.append(a) or onednn(*a))
    torch.manual_seed(0)
    linear = Linear(d_in, d_out, bias=bias)
    packed = PackedLinear(linear)
    x = torch.randn(rows, 1, d_in)
    ref = nn.functional.linear(
        x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double()
    )
    with torch.no_grad():
        out = packed(x)
    assert bool(calls) == packed_path
    assert out.dtype == torch.float32 and out.shape == (rows, 1, d_out)
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_packed_linear_notices_changed_weights():
    """The packed copy is of the weights at packing time: after an in-place update (an optimizer
    step) the layer must compute with the new weights, not the stale copy."""
    torch.manual_seed(0)
    linear = Linear(256, 1024)
    packed = PackedLinear(linear)
    x = torch.randn(8, 256)
    with torch.no_grad():
        linear.weight.mul_(-2.0)
        out = packed(x)
    assert torch.allclose(out, nn.functional.linear(x, linear.weight, linear.bias), atol=1e-4)


@needs_onednn
def test_packed_model_shares_the_parameters_and_computes_the_same():
    torch.manual_seed(0)
    model = Transformer(load_config("tiny").model).eval()
    packed = pack_model(model)
    assert packed is not model and isinstance(packed.out_proj, PackedLinear)
    assert isinstance(packed.decoder.layers[0].self_attn.w_q, PackedLinear)
    assert not any(type(m) is Linear for m in packed.modules())
    assert all(a is b for a, b in zip(model.parameters(), packed.parameters()))  # shared, not copied
    assert packed.out_proj.weight is packed.decoder.embedding.tokens.weight  # still tied
    assert packed.state_dict().keys() == model.state_dict().keys()
    src = torch.randint(4, 64, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    with torch.no_grad():
        ref, out = model(src, src, mask), packed(src, src, mask)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    twin = copy.deepcopy(packed)  # oneDNN's layout is opaque to copy: packed anew
    assert isinstance(twin.out_proj, PackedLinear) and twin.out_proj.weight is not model.out_proj.weight
    with torch.no_grad():
        assert torch.allclose(twin(src, src, mask), out, atol=1e-5)
    assert isinstance(quantize_model(packed, "int8").out_proj, Int8Linear)


@needs_onednn
def test_float_translator_packs_and_translates_as_before(toy_run, toy_corpus, monkeypatch):
    """Same greedy and beam-4 translations with the packed layers as with nn.Linear's path."""
    import aiayn.inference.quantize

    sources = read_split(toy_corpus, "test")[0][:20]
    packed = Translator.load(toy_run, "cpu")
    assert isinstance(packed.model.out_proj, PackedLinear)
    monkeypatch.setattr(aiayn.inference.quantize, "ONEDNN_REORDER", None)
    plain = Translator.load(toy_run, "cpu")
    assert type(plain.model.out_proj) is Linear
    for beam in (1, 4):
        assert [t[0].tokens for t in packed.translate(sources, beam_size=beam)] == [
            t[0].tokens for t in plain.translate(sources, beam_size=beam)
        ]

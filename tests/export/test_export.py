"""export/: the exported folders, loaded by their own libraries, compute aiayn's function (greedy
tokens identical, log-probabilities within 1e-4); Marian and CTranslate2 twins of every shape the
targets express; bad settings give one-line errors and write nothing."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from toydata import save_run, train_toy_tokenizer

from aiayn.cli import main
from aiayn.config import BOS_ID, EOS_ID, PAD_ID, load_config, preset
from aiayn.data.corpus import read_split
from aiayn.export.common import token_strings
from aiayn.export.ct2 import ct2_from_aiayn
from aiayn.export.huggingface import marian_from_aiayn
from aiayn.inference.translate import Translator
from aiayn.models.build import build_model
from aiayn.models.transformer import Transformer

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed (the test extra installs it)",
)
needs_ct2 = pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 is not installed (the test extra installs it)"
)
pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4
SENTENCES = 20


class IdTokenizer:
    """Text spelled as ids ("t17 t5 …"), for models without a SentencePiece model."""

    vocab_size = 64

    def encode_batch(self, lines: list[str]) -> list[list[int]]:
        return [[int(word[1:]) for word in line.split()] for line in lines]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)


def perturbed_tiny(vocab: int = 64, seed: int = 0, **overrides) -> Transformer:
    """A tiny model whose LayerNorm gains and biases are not 1 and 0, so a wrongly permuted one
    shows; the EOS embedding is scaled up so that outputs end at different lengths."""
    torch.manual_seed(seed)
    items = [f"vocab_size={vocab}", *(f"{k}={v}" for k, v in overrides.items())]
    model = Transformer(load_config("tiny", overrides=items).model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for embedding in {model.decoder.embedding.tokens, model.out_proj}:
            embedding.weight[EOS_ID] *= 3
    return model


def padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (3, 9), generator=g)
    src[:, -1] = EOS_ID
    src[1, 6:], src[2, 3:] = PAD_ID, PAD_ID
    tgt = torch.randint(4, vocab, (3, 7), generator=g)
    tgt[:, 0] = BOS_ID
    return src, src != PAD_ID, tgt


def token_log_probs(model: Transformer, src: list[int], tokens: list[int]) -> torch.Tensor:
    """aiayn's log-probability of each of ``tokens`` (teacher-forced after BOS), over the whole vocabulary."""
    tgt = torch.tensor([[BOS_ID, *tokens]])
    with torch.no_grad():
        logits = model(torch.tensor([src]), tgt[:, :-1], torch.ones(1, len(src), dtype=torch.bool))
    return logits.log_softmax(-1)[0].gather(-1, tgt[0, 1:, None]).squeeze(-1)


def held_out(data: Path) -> tuple[list[str], list[str]]:
    sources, references = read_split(data, "test")
    return sources[:SENTENCES], references[:SENTENCES]


@pytest.fixture(scope="module")
def greedy(toy_run, toy_corpus):
    """aiayn's greedy translations of 20 toy test sentences: (translator, sources, hypotheses)."""
    translator = Translator.load(toy_run, "cpu")
    sources, _ = held_out(toy_corpus)
    return translator, sources, [t[0] for t in translator.translate(sources, beam_size=1)]


def limits(translator: Translator, sources: list[str]) -> list[int]:
    """aiayn's step limit per sentence: source subwords + EOS + the offset, EOS counted."""
    return [
        len(ids) + 1 + translator.config.decode.max_len_offset for ids in translator.tokenizer.encode_batch(sources)
    ]


def with_eos(h) -> list[int]:
    return h.tokens + ([EOS_ID] if h.finished else [])


# ---------------------------------------------------------------------------- the exported folders


@needs_transformers
def test_huggingface_folder_loads_and_translates_like_aiayn(greedy, toy_run, toy_corpus, tmp_path, capsys):
    from transformers import MarianMTModel, MarianTokenizer

    translator, sources, hyps = greedy
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    _, references = held_out(toy_corpus)
    (tmp_path / "src.es").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("\n".join(references) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run),
                "--src",
                str(tmp_path / "src.es"),
                "--ref",
                str(tmp_path / "ref.en"),
                "--beam",
                "1",
                "--out",
                str(run / "eval"),
            ]
        )
        == 0
    )
    out = tmp_path / "exports" / "hf"
    assert main(["export", "--model", str(run), "--to", "huggingface", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    tokenizer = MarianTokenizer.from_pretrained(out)
    marian = MarianMTModel.from_pretrained(out).eval()
    for source, hyp, limit in zip(sources, hyps, limits(translator, sources)):
        ids = tokenizer(source)["input_ids"]
        assert ids == translator.tokenizer.encode(source) + [EOS_ID]  # the tokenizer's ids are the model's
        found = marian.generate(input_ids=torch.tensor([ids]), num_beams=1, do_sample=False, max_length=limit + 1)
        assert found[0, 1:].tolist() == with_eos(hyp)
        with torch.no_grad():
            logits = marian(input_ids=torch.tensor([ids]), decoder_input_ids=found[:, :-1]).logits
        theirs = logits.log_softmax(-1)[0].gather(-1, found[0, 1:, None]).squeeze(-1)
        ours = token_log_probs(translator.model, ids, with_eos(hyp))
        assert (theirs - ours).abs().max() < TOL
        assert abs(float(ours.sum()) - hyp.log_prob) < 1e-3  # what the search summed
    assert tokenizer.decode(found[0], skip_special_tokens=True) == translator.tokenizer.decode(hyp.tokens)

    card = (out / "README.md").read_text()
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert f"BLEU {scores['bleu']:.1f}" in card and scores["bleu_signature"] in card
    assert "preset: `tiny`" in card and "training steps: 1,000" in card and f"aiayn export --model {run}" in card
    for difference in ("Length penalty", "sin-half | cos-half", "Maximum length"):
        assert difference in card


@needs_ct2
def test_ctranslate2_folder_loads_and_translates_like_aiayn(greedy, toy_run, tmp_path):
    import ctranslate2
    import sentencepiece as spm

    translator, sources, hyps = greedy
    out = tmp_path / "ct2"
    assert main(["export", "--model", str(toy_run), "--to", "ctranslate2", "--out", str(out)]) == 0
    ct2 = ctranslate2.Translator(str(out), device="cpu", compute_type="float32", intra_threads=1)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    pieces = sp.encode(sources, out_type=str)
    for source_pieces, hyp, limit in zip(pieces, hyps, limits(translator, sources)):
        found = ct2.translate_batch(
            [source_pieces],
            beam_size=1,
            min_decoding_length=0,
            max_decoding_length=limit,
            suppress_sequences=[["<pad>"], ["<s>"]],
        )[0].hypotheses[0]
        assert [sp.piece_to_id(p) for p in found] == hyp.tokens
        scored = ct2.score_batch([source_pieces], [found])[0]  # EOS appended and scored
        ids = [sp.piece_to_id(p) for p in source_pieces] + [EOS_ID]
        ours = token_log_probs(translator.model, ids, hyp.tokens + [EOS_ID])
        assert (torch.tensor(scored.log_probs) - ours).abs().max() < TOL
    assert "ctranslate2.Translator" in (out / "README.md").read_text()


@needs_ct2
def test_ctranslate2_quantization_is_stored_in_the_folder(toy_run, tmp_path):
    import ctranslate2

    assert main(["export", "--model", str(toy_run), "--to", "ctranslate2", "--out", str(tmp_path / "fp32")]) == 0
    assert (
        main(
            [
                "export",
                "--model",
                str(toy_run),
                "--to",
                "ctranslate2",
                "--out",
                str(tmp_path / "int8"),
                "--quantization",
                "int8",
            ]
        )
        == 0
    )
    sizes = {name: (tmp_path / name / "model.bin").stat().st_size for name in ("fp32", "int8")}
    assert sizes["int8"] < 0.5 * sizes["fp32"]
    found = ctranslate2.Translator(str(tmp_path / "int8"), compute_type="int8").translate_batch([["▁el", "▁que"]])
    assert found[0].hypotheses[0]
    assert "weights stored as `int8`" in (tmp_path / "int8" / "README.md").read_text()


# ---------------------------------------------------------------------------- twins of every shape


@needs_transformers
@pytest.mark.parametrize("tie", ["all", "decoder", "none"])
def test_marian_twin_gives_aiayns_logits(tie):
    model = perturbed_tiny(tie_embeddings=tie)
    marian = marian_from_aiayn(model)
    src, mask, tgt = padded_batch(64)
    with torch.no_grad():
        ours = model(src, tgt, mask)
        theirs = marian(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    real = mask.any(dim=1)
    assert ours.shape == theirs.shape
    assert (ours - theirs)[real].abs().max() < TOL


@needs_transformers
def test_marian_twin_generates_aiayns_greedy_output():
    """Covers the incremental paths too (Hugging Face's cache and position offsets vs aiayn's), and
    outputs that end at different lengths."""
    model = perturbed_tiny()
    marian = marian_from_aiayn(model)
    cfg = dataclasses.replace(preset("tiny"), model=model.cfg)
    rows = [[5, 9, 12, 40, 7, EOS_ID], [33, 8, 21, 60, 4, EOS_ID], [17, 17, 50, EOS_ID]]
    translator = Translator(model, IdTokenizer(), cfg, "cpu")
    for row in rows:
        ours = translator.translate([IdTokenizer().decode(row[:-1])], beam_size=1)[0][0]
        found = marian.generate(
            input_ids=torch.tensor([row]),
            num_beams=1,
            do_sample=False,
            max_length=len(row) + cfg.decode.max_len_offset + 1,
        )
        assert found[0, 1:].tolist() == with_eos(ours)
    assert any(
        len(translator.translate([IdTokenizer().decode(r[:-1])], beam_size=1)[0][0].tokens) < 20 for r in rows
    )  # the scaled EOS ends some outputs early


@needs_ct2
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm": "pre", "positional": "learned", "tie_embeddings": "none"},
        {"tie_embeddings": "decoder", "n_decoder_layers": 1},
    ],
    ids=["paper", "pre-norm-learned-untied", "decoder-tied"],
)
def test_ctranslate2_twin_scores_and_translates_like_aiayn(tmp_path, overrides):
    import ctranslate2

    model = perturbed_tiny(**overrides)
    path = ct2_from_aiayn(model, tmp_path / "ct2")
    ct2 = ctranslate2.Translator(str(path), device="cpu", compute_type="float32", intra_threads=1)
    tokens = token_strings(64)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(4, 64, (n,), generator=g).tolist() for n in (8, 5, 2)]  # sources without EOS
    targets = [torch.randint(4, 64, (n,), generator=g).tolist() for n in (6, 3, 7)]
    sources = [[tokens[i] for i in row] for row in rows]
    scored = ct2.score_batch(sources, [[tokens[i] for i in t] for t in targets])  # CTranslate2 adds both EOS
    for row, target, found in zip(rows, targets, scored):
        ours = token_log_probs(model, row + [EOS_ID], target + [EOS_ID])
        assert (torch.tensor(found.log_probs) - ours).abs().max() < TOL

    cfg = dataclasses.replace(preset("tiny"), model=model.cfg)
    translator = Translator(model, IdTokenizer(), cfg, "cpu")
    for source in sources:
        ours = translator.translate([" ".join(source)], beam_size=1)[0][0]
        found = ct2.translate_batch(
            [source],
            beam_size=1,
            min_decoding_length=0,
            max_decoding_length=len(source) + 1 + 50,
            suppress_sequences=[["<pad>"], ["<s>"]],
        )
        assert [tokens.index(t) for t in found[0].hypotheses[0]] == ours.tokens


# ---------------------------------------------------------------------------- refusals


def toy_run(folder: Path, **model) -> Path:
    folder.mkdir(parents=True)
    train_toy_tokenizer(folder)
    cfg = preset("tiny")
    cfg.model = dataclasses.replace(cfg.model, **model)
    torch.manual_seed(0)
    return save_run(folder, build_model(cfg.model), cfg)


@pytest.mark.parametrize(
    "to, model, extra, message",
    [
        ("onnx", {}, [], "unknown --to 'onnx' (choose from ctranslate2, huggingface)"),
        ("ctranslate2", {"arch": "rnn"}, [], "model.arch=rnn: ctranslate2 holds Transformers only"),
        ("huggingface", {"arch": "conv"}, [], "model.arch=conv: huggingface holds Transformers only"),
        ("huggingface", {"norm": "pre"}, [], "model.norm=pre: Marian is post-norm"),
        ("huggingface", {"positional": "learned"}, [], "model.positional=learned: Marian recomputes its sinusoids"),
        ("ctranslate2", {"d_k": 16}, [], "model.d_k=16, d_v=8: ctranslate2 needs d_k = d_v = d_model / n_heads = 8"),
        ("huggingface", {"d_v": 4}, [], "model.d_k=8, d_v=4: huggingface needs d_k = d_v"),
        ("huggingface", {}, ["--quantization", "int8"], "--quantization applies to --to ctranslate2 only"),
        ("ctranslate2", {}, ["--quantization", "int3"], "unknown --quantization 'int3'"),
    ],
)
def test_bad_export_settings_are_one_line_errors_and_write_nothing(tmp_path, capsys, to, model, extra, message):
    run = toy_run(tmp_path / "run", **model)
    out = tmp_path / "exports" / "model"
    assert main(["export", "--model", str(run), "--to", to, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("aiayn: error: ")
    assert not (tmp_path / "exports").exists()


def test_existing_folder_and_missing_package_are_refused(tmp_path, capsys, monkeypatch):
    run = toy_run(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", "--model", str(run), "--to", "ctranslate2", "--out", str(out)]) == 2
    assert "already exists; choose another --out" in capsys.readouterr().err
    assert list(out.iterdir()) == []

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    assert main(["export", "--model", str(run), "--to", "huggingface", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "needs the transformers package: pip install transformers" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()


@needs_ct2
def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import aiayn.export as export
    from aiayn.export import ct2

    run = toy_run(tmp_path / "run")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ct2, "write_folder", broken)
    with pytest.raises(OSError):
        export.export(run, "ctranslate2", tmp_path / "exports" / "ct2")
    assert list((tmp_path / "exports").iterdir()) == []

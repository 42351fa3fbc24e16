"""The systems ``bench.decode`` times, and what they translate: aiayn's ``Translator`` (float32,
int8, bf16 autocast; either stopping rule), Hugging Face Marian and CTranslate2 holding aiayn's
weights, converted by ``aiayn export``'s functions.

A ``Workload`` is the same sources twice, as text for aiayn's ``Translator`` and as ids for the
peers; a ``System`` translates one and returns the output lengths. A ``Subject`` (the model under
test) and a ``Spec`` (which system) are picklable, so that each system is built in the fresh
process that times it (``bench.decode.measure_isolated``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError, Config
from aiayn.data.batching import pad_rows, source_row
from aiayn.export.common import token_strings
from aiayn.export.ct2 import ct2_from_aiayn
from aiayn.export.huggingface import marian_from_aiayn
from aiayn.inference.translate import BANNED, Translator
from aiayn.models.transformer import Transformer
from aiayn.training.checkpoint import load_for_inference
from bench.common import preset_config

BATCH = 32  # sentences in the batched run
FORCED_LEN = 32  # source and output length of the forced-length workload
FINISHED = ", stop=finished"  # aiayn with CTranslate2's stopping rule: the same work as that peer


class IdTokenizer:
    """Text spelled as ids ("t17 t5 …"), so that Translator runs on synthetic sources."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode_batch(self, lines: list[str]) -> list[list[int]]:
        return [[int(word[1:]) for word in line.split()] for line in lines]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)


@dataclass
class Workload:
    """What every system translates: ``lines`` for aiayn's Translator (text in, text out) and the
    same sources as ids with EOS (``rows``) for the peers, which take ids or token strings."""

    lines: list[str]
    rows: list[list[int]]
    forced: int | None  # every output exactly this many tokens (random weights), or None


def synthetic_workload(n: int, vocab: int, src_len: int, out_len: int, seed: int = 0) -> Workload:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, src_len - 1), generator=g).tolist()
    return Workload([IdTokenizer(vocab).decode(x) for x in ids], [source_row(x) for x in ids], out_len)


def forced_translator(model: Transformer, cfg: Config, src_len: int, out_len: int, device: torch.device) -> Translator:
    """A Translator whose every output has exactly ``out_len`` tokens for ``src_len``-token sources:
    EOS is banned for ``out_len`` tokens (decode.min_len) and the limit is src_len + offset."""
    cfg = copy.deepcopy(cfg)
    cfg.decode.min_len, cfg.decode.max_len_offset = out_len, out_len - src_len
    return Translator(model, IdTokenizer(cfg.model.vocab_size), cfg, device)


def _output_length(ids: list[int]) -> int:
    """Tokens of an output, BOS/EOS/PAD left out: what every system is credited with."""
    n = 0
    for i in ids:
        if i in (EOS_ID, PAD_ID):
            break
        n += i != BOS_ID
    return n


System = Callable[[Workload, int, int], list[int]]  # (workload, batch size, beam) -> output lengths


def aiayn_system(translator: Translator, autocast: torch.dtype | None, stop: str | None = None) -> System:
    def run(w: Workload, batch: int, beam: int) -> list[int]:
        out = []
        for start in range(0, len(w.lines), batch):
            with torch.autocast(translator.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                lines = w.lines[start : start + batch]
                found = translator.translate(lines, beam_size=beam, stop=stop, batch_tokens=10**9)
            out += [len(t[0].tokens) for t in found]
        return out

    return run


def hf_system(marian: Any, cfg: Config, device: torch.device, autocast: torch.dtype | None) -> System:
    def run(w: Workload, batch: int, beam: int) -> list[int]:
        out = []
        for start in range(0, len(w.rows), batch):
            rows = w.rows[start : start + batch]
            src, mask = pad_rows(rows)
            src, mask = src.to(device), mask.long().to(device)  # Hugging Face's masks are 0/1 integers
            if w.forced:
                lengths = dict(min_new_tokens=w.forced, max_new_tokens=w.forced)
            else:
                lengths = dict(
                    max_new_tokens=max(map(len, rows)) + cfg.decode.max_len_offset, length_penalty=cfg.decode.alpha
                )
            with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                ids = marian.generate(
                    input_ids=src,
                    attention_mask=mask,
                    num_beams=beam,
                    do_sample=False,
                    suppress_tokens=list(BANNED),
                    **lengths,
                )
            out += [_output_length(r) for r in ids.tolist()]
        return out

    return run


def ct2_system(translator: Any, cfg: Config) -> System:
    tokens = token_strings(cfg.model.vocab_size)
    banned = [[tokens[i]] for i in BANNED]

    def run(w: Workload, batch: int, beam: int) -> list[int]:
        out = []
        for start in range(0, len(w.rows), batch):
            rows = w.rows[start : start + batch]
            if w.forced:
                lengths = dict(min_decoding_length=w.forced, max_decoding_length=w.forced)
            else:
                lengths = dict(
                    max_decoding_length=max(map(len, rows)) + cfg.decode.max_len_offset,
                    min_decoding_length=cfg.decode.min_len,
                    length_penalty=cfg.decode.alpha,
                )
            # r[:-1]: the exported model appends the source's EOS itself (add_source_eos)
            found = translator.translate_batch(
                [[tokens[i] for i in r[:-1]] for r in rows],
                beam_size=beam,
                max_batch_size=batch,
                suppress_sequences=banned,
                **lengths,
            )
            out += [sum(t != tokens[EOS_ID] for t in r.hypotheses[0]) for r in found]
        return out

    return run


@dataclass
class Subject:
    """The model under test, where a process finds it, and its workloads. Picklable: every system
    is built and timed in a fresh process of its own (``measure_isolated``)."""

    cfg: Config
    label: str
    source: Path  # a trained run folder or checkpoint, or the saved random weights of preset ``cfg``
    trained: bool
    ct2_dir: Path | None  # the same weights converted for CTranslate2; None where it is not installed
    workloads: dict[str, Workload]


@dataclass(frozen=True)
class Spec:
    """One system to measure, as the process that times it builds it."""

    label: str
    kind: str  # "aiayn", "marian" or "ctranslate2"
    option: str | None = None  # aiayn: "int8"; marian: "bf16" (autocast); ctranslate2: the compute type
    stop: str | None = None  # aiayn's stopping rule (None: the model's own)


def load_subject(
    name: str, model_path: str | None, data_dir: Path | None, args: argparse.Namespace, work_dir: Path
) -> Subject:
    """The trained model at ``model_path``, or a random one of preset ``name`` (saved under
    ``work_dir``). Every model gets the forced-length workload (time per token at equal lengths,
    whatever the weights); a trained one also translates Bible test verses at the lengths each
    system chooses. The CTranslate2 conversion is written under ``work_dir``."""
    if model_path is None:
        cfg = preset_config(name)
        torch.manual_seed(0)
        model, label, source = Transformer(cfg.model).eval(), "random weights", work_dir / "weights.pt"
        torch.save(model.state_dict(), source)
    else:
        loaded = load_for_inference(model_path, "cpu")
        model, cfg, label, source = loaded.model, loaded.config, f"trained ({model_path})", Path(model_path)
    length = 8 if args.quick else FORCED_LEN
    workloads = {f"synthetic, forced length {length}": synthetic_workload(BATCH, cfg.model.vocab_size, length, length)}
    if model_path is not None:
        if data_dir is None:
            raise AiaynError(f"--model {model_path}: no Bible test sentences; pass --data DIR (from `aiayn prepare`)")
        from aiayn.data.corpus import read_split

        lines = [line for line in read_split(data_dir, "test")[0] if line.strip()][:BATCH]
        rows = [source_row(x, cfg.model.max_len) for x in loaded.tokenizer.encode_batch(lines)]
        workloads["bible test, own lengths"] = Workload(lines, rows, None)
    # Not installed (e.g. on a GPU image): CTranslate2's lines say so (measure_workload).
    ct2_dir = ct2_from_aiayn(model, work_dir / "ct2") if importlib.util.find_spec("ctranslate2") else None
    return Subject(cfg, label, source, model_path is not None, ct2_dir, workloads)


def aiayn_translator(subject: Subject, w: Workload, device: torch.device) -> Translator:
    """aiayn's Translator for workload ``w``: the trained model with its own decoding settings, or the
    random one with every output forced to ``w.forced`` tokens."""
    if subject.trained and not w.forced:
        return Translator.load(subject.source, device)
    if subject.trained:
        model = load_for_inference(subject.source, device).model
    else:
        model = Transformer(subject.cfg.model)
        model.load_state_dict(torch.load(subject.source, weights_only=True))
    return forced_translator(model.to(device).eval(), subject.cfg, len(w.rows[0]), w.forced, device)


def build_system(spec: Spec, subject: Subject, w: Workload, device: torch.device) -> System:
    """``spec``'s system for workload ``w``, built in the process that will time it."""
    if spec.kind == "ctranslate2":
        if subject.ct2_dir is None:
            raise AiaynError("ctranslate2 is not installed (pip install 'aiayn[bench]')")
        import ctranslate2

        translator = ctranslate2.Translator(
            str(subject.ct2_dir),
            device=device.type,
            compute_type=spec.option,
            intra_threads=torch.get_num_threads(),
            inter_threads=1,
        )
        return ct2_system(translator, subject.cfg)
    translator = aiayn_translator(subject, w, device)
    if spec.kind == "marian":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        autocast = torch.bfloat16 if spec.option == "bf16" else None
        return hf_system(marian_from_aiayn(translator.model).to(device), subject.cfg, device, autocast)
    if spec.option == "int8":
        translator = int8(translator)
    return aiayn_system(translator, torch.bfloat16 if spec.option == "bf16" else None, spec.stop)


def specs(device: torch.device) -> list[Spec]:
    """aiayn's variants first (the speedups of later lines refer to them), then the peers:
    Hugging Face Marian and CTranslate2 (fp32, int8; on CUDA also bf16)."""
    found = [Spec("aiayn", "aiayn")]
    if device.type == "cuda":
        found.append(Spec("aiayn bf16", "aiayn", "bf16"))  # under autocast
    else:
        found.append(Spec("aiayn int8", "aiayn", "int8"))
    found.append(Spec("aiayn" + FINISHED, "aiayn", stop="finished"))
    if device.type == "cpu":
        found.append(Spec("aiayn int8" + FINISHED, "aiayn", "int8", stop="finished"))
    found.append(Spec("transformers Marian", "marian"))
    compute_types = {"fp32": "float32", "int8": "int8"}
    if device.type == "cuda":  # where bf16 is native; Marian under autocast
        found.append(Spec("transformers Marian bf16", "marian", "bf16"))
        compute_types = {"fp32": "float32", "int8": "int8_float32", "bf16": "bfloat16"}
    found += [
        Spec(f"ctranslate2 {label}", "ctranslate2", compute_type) for label, compute_type in compute_types.items()
    ]
    return found


def subset(w: Workload, n: int) -> Workload:
    return Workload(w.lines[:n], w.rows[:n], w.forced)


def int8(translator: Translator) -> Translator:
    """The same model, tokenizer and settings with int8 linear layers (``--quantize int8``)."""
    return Translator(translator.model, translator.tokenizer, translator.config, translator.device, quantize="int8")

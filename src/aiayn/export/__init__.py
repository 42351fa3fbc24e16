"""``aiayn export``: a trained model for the runtimes its users deploy with, tokenizer included.

    aiayn export --model runs/demo --to ctranslate2 --out exports/demo-ct2 [--quantization int8]
    aiayn export --model runs/demo --to huggingface --out exports/demo-hf

Both folders compute aiayn's own function (tests/export/test_export.py compares greedy tokens and
log-probabilities on Bible verses):

- ``huggingface``: a ``MarianMTModel`` of the same shape (post-norm, ReLU, √d_model-scaled
  embeddings, static sinusoids, PAD 0 / BOS 2 / EOS 3) holding aiayn's weights, and a
  ``MarianTokenizer`` over aiayn's SentencePiece model whose vocabulary maps each piece to
  aiayn's id. Marian lays its sinusoids out as sin-half | cos-half where §3.5 interleaves
  them, so the model dimensions are permuted, consistently in every weight that reads or
  writes the residual stream, the embeddings and the LayerNorms.
- ``ctranslate2``: a CTranslate2 ``TransformerSpec`` written from aiayn's weights directly, with
  aiayn's own position table (no permutation; learned positions and pre-norm fit too), EOS
  appended to the source by CTranslate2 itself, and the SentencePiece model beside it.

A configuration a target cannot express is refused with one line naming the setting, and
nothing is written: the folder is assembled under a temporary name and renamed when complete.
Transformers and CTranslate2 are imported inside the functions that use them: they are
optional dependencies (``pip install 'aiayn[export]'``), and ``export`` checks for them first.

One module per target (``huggingface``, ``ct2``), what they share in ``common`` (which settings a
target can express, the vocabulary's token strings), the model card in ``card``; this module is the
command: checks first, then the target's ``write_folder``, then the card, then the rename.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from aiayn.config import AiaynError
from aiayn.export import ct2, huggingface
from aiayn.export.card import model_card, read_json
from aiayn.export.common import unsupported
from aiayn.training.checkpoint import load_for_inference, run_folder

TARGETS = {"ctranslate2": "ctranslate2", "huggingface": "transformers"}  # target -> the package it needs


def check_target(target: str, quantization: str | None) -> None:
    """One-line errors for a target or quantization that cannot be exported here."""
    if target not in TARGETS:
        raise AiaynError(f"unknown --to '{target}' (choose from {', '.join(TARGETS)})")
    package = TARGETS[target]
    if importlib.util.find_spec(package) is None:
        raise AiaynError(
            f"--to {target} needs the {package} package: pip install {package} (or pip install 'aiayn[export]')"
        )
    if quantization is None:
        return
    if target != "ctranslate2":
        raise AiaynError(f"--quantization applies to --to ctranslate2 only (got --to {target})")
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    if quantization not in ACCEPTED_MODEL_TYPES:
        raise AiaynError(f"unknown --quantization '{quantization}' (choose from {', '.join(ACCEPTED_MODEL_TYPES)})")


def export(
    model_path: str | Path, target: str, out: str | Path, *, quantization: str | None = None, command: str | None = None
) -> Path:
    """Write the model at ``model_path`` (a run folder or checkpoint) for ``target`` into the new
    folder ``out``, with its tokenizer and a README.md model card. Every check runs before
    anything is written; the folder appears only when complete."""
    out = Path(out)
    check_target(target, quantization)
    if out.exists():
        raise AiaynError(f"{out} already exists; choose another --out or remove it")
    loaded = load_for_inference(model_path, "cpu")
    why = unsupported(loaded.config.model, target, tokenizer=loaded.tokenizer.kind)
    if why:
        raise AiaynError(f"cannot export to {target}: {why}")
    if loaded.tokenizer.vocab_size > loaded.config.model.vocab_size:
        raise AiaynError(
            f"{loaded.tokenizer.model_path}: {loaded.tokenizer.vocab_size} pieces but the model has "
            f"{loaded.config.model.vocab_size} rows; export the run folder the model was trained in"
        )
    run_dir = run_folder(loaded.path)
    meta = read_json(run_dir / "data_meta.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(folder, ignore_errors=True)  # left by a killed export that had this process id
    folder.mkdir()
    try:
        with torch.no_grad():
            if target == "huggingface":
                huggingface.write_folder(loaded.model, loaded.config, loaded.tokenizer, folder, meta)
            else:
                ct2.write_folder(loaded.model, loaded.config, loaded.tokenizer, folder, quantization)
        card = model_card(
            target, loaded.config, loaded.step, run_dir, meta, out, quantization=quantization, command=command
        )
        (folder / "README.md").write_text(card, encoding="utf-8")
        folder.rename(out)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return out


def run(args: Any) -> None:
    """``aiayn export``: write the folder and print where it is."""
    command = f"aiayn export --model {args.model} --to {args.to} --out {args.out}"
    if args.quantization:
        command += f" --quantization {args.quantization}"
    out = export(args.model, args.to, args.out, quantization=args.quantization, command=command)
    print(f"aiayn: wrote {out} ({args.to}); see {out / 'README.md'}")

"""README.md of an exported folder: the model card."""

from __future__ import annotations

import json
from pathlib import Path

from aiayn import __version__
from aiayn.config import Config


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def model_card(
    target: str,
    config: Config,
    step: int,
    run_dir: Path,
    meta: dict,
    out: Path,
    *,
    quantization: str | None = None,
    command: str | None = None,
) -> str:
    """README.md of an exported folder: where the model comes from, how well it translates, how
    to run it, and where the runtime decodes differently from aiayn."""
    m, d = config.model, config.decode
    src, tgt = meta.get("src_lang", "source"), meta.get("tgt_lang", "target")
    data = read_json(run_dir / "run.json").get("data_dir", "unknown")
    counts = meta.get("counts", {})
    scores = read_json(run_dir / "eval" / "scores.json")
    lines = [
        f"# aiayn Transformer, {src}→{tgt} ({target})",
        "",
        f"A Transformer (*Attention Is All You Need*) trained with aiayn {__version__} and exported for "
        f"{'CTranslate2' if target == 'ctranslate2' else 'Hugging Face Transformers (MarianMTModel)'}.",
        "",
        f"- data: `{data}` ({meta.get('source', 'parallel text')}"
        + (f"; {counts.get('train', '?'):,} training pairs" if counts else "")
        + ")",
        f"- preset: `{config.preset}` (recipe `{config.recipe}`): d_model {m.d_model}, {m.n_heads} heads, "
        f"d_ff {m.d_ff}, {m.n_layers}+{m.decoder_layers} layers, norm={m.norm}, positional={m.positional}, "
        f"tie_embeddings={m.tie_embeddings}, vocabulary {m.vocab_size:,} (joint SentencePiece, PAD 0, UNK 1, "
        "BOS 2, EOS 3)",
        f"- training steps: {step:,}",
    ]
    if scores.get("bleu") is not None:
        lines.append(
            f"- {scores.get('split') or 'test'} BLEU {scores['bleu']:.1f}, chrF {scores.get('chrf', 0):.1f} "
            f"({scores.get('sentences', '?')} sentences, beam {scores.get('beam_size', '?')}, aiayn's "
            f"decoding); sacreBLEU signature `{scores.get('bleu_signature', '?')}`"
        )
    else:
        lines.append("- test BLEU: not measured (run `aiayn evaluate --out RUN/eval` before exporting)")
    if quantization:
        lines.append(f"- weights stored as `{quantization}` (CTranslate2 quantization)")
    lines += [f"- made by: `{command or f'aiayn export --to {target} --out {out}'}`", "", "## Use", ""]
    sentence = "En el principio creó Dios los cielos y la tierra." if src == "es" else "A sentence to translate."
    if target == "ctranslate2":
        lines += [
            "```python",
            "import ctranslate2, sentencepiece as spm",
            "",
            f'sp = spm.SentencePieceProcessor(model_file="{out}/spm.model")',
            f'translator = ctranslate2.Translator("{out}", device="cpu")',
            f'pieces = sp.encode(["{sentence}"], out_type=str)',
            f"found = translator.translate_batch(pieces, beam_size={d.beam_size}, length_penalty={d.alpha}, "
            f"min_decoding_length={d.min_len}, max_decoding_length={m.max_len}, "
            "suppress_sequences=[['<pad>'], ['<s>']])",
            "print(sp.decode(found[0].hypotheses[0]))",
            "```",
            "",
            "The source gets its EOS from CTranslate2 (`add_source_eos`); pass SentencePiece pieces only.",
        ]
    else:
        lines += [
            "```python",
            "from transformers import MarianMTModel, MarianTokenizer",
            "",
            f'tokenizer = MarianTokenizer.from_pretrained("{out}")',
            f'model = MarianMTModel.from_pretrained("{out}")',
            f'batch = tokenizer(["{sentence}"], return_tensors="pt", padding=True)',
            "print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))",
            "```",
            "",
            "The tokenizer's ids are aiayn's: `vocab.json` maps every piece of the joint SentencePiece model "
            "(`source.spm` = `target.spm`) to its id, and EOS is appended to the source.",
        ]
    lines += ["", "## Where this runtime differs from aiayn", ""]
    penalty = {
        "gnmt": f"GNMT's ((5 + |Y|) / 6)^α with α = {d.alpha}",
        "fairseq": f"|Y|^α with α = {d.alpha}",
        "none": "no length normalisation",
    }[d.length_penalty]
    lines.append(
        f"- **Length penalty.** aiayn ranks beam hypotheses with {penalty}; this runtime divides by "
        f"|Y|^α (`length_penalty`{'' if target == 'ctranslate2' else ', set to α in generation_config.json'})"
        + (
            ", the same formula."
            if d.length_penalty == "fairseq"
            else ", so beam search may choose different lengths; greedy search is identical."
        )
    )
    if target == "huggingface":
        lines.append(
            "- **Positions.** §3.5 interleaves sines and cosines; Marian lays them out as sin-half | "
            "cos-half. The export permutes the model dimensions (every weight that reads or writes the "
            "residual stream, the embeddings and the LayerNorms) so the network computes aiayn's function."
        )
    else:
        lines.append(
            f"- **Positions.** The folder holds aiayn's own position table ({m.max_len} positions, "
            f"{m.positional}), so the network computes aiayn's function as it is."
        )
    lines.append(
        f"- **Maximum length.** aiayn stops each sentence at its source length + {d.max_len_offset} "
        f"subwords; this runtime has one limit per call ("
        + (
            "`max_decoding_length`, 256 unless given"
            if target == "ctranslate2"
            else f"`max_length` = {m.max_len} in generation_config.json, or `max_new_tokens`"
        )
        + f"). Sources and outputs longer than {m.max_len} positions do not fit the model."
    )
    lines.append(
        "- **Banned tokens.** aiayn never generates PAD or BOS; "
        + (
            "pass `suppress_sequences=[['<pad>'], ['<s>']]` as above."
            if target == "ctranslate2"
            else "generation_config.json suppresses them (`suppress_tokens`)."
        )
    )
    if target == "ctranslate2":
        lines.append(
            f"- **Minimum length.** CTranslate2 emits at least one token unless given "
            f"`min_decoding_length`; aiayn's is {d.min_len}, as above."
        )
    return "\n".join(lines) + "\n"

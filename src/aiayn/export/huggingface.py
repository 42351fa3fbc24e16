"""``--to huggingface``: a ``MarianMTModel`` of aiayn's shape holding aiayn's weights, and a
``MarianTokenizer`` over aiayn's SentencePiece model. Marian lays its sinusoids out as
sin-half | cos-half where §3.5 interleaves them, so the model dimensions are permuted,
consistently in every weight that reads or writes the residual stream, the embeddings and the
LayerNorms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, AiaynError, Config, ModelConfig
from aiayn.export.common import BANNED, unsupported, vocabulary
from aiayn.models.transformer import Transformer


def residual_permutation(d_model: int) -> Tensor:
    """Marian's dimension k is aiayn's dimension perm[k]: its sin half holds aiayn's even
    dimensions (the sines of §3.5), its cos half the odd ones."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def marian_config(m: ModelConfig, vocab_size: int | None = None) -> Any:
    from transformers import MarianConfig

    why = unsupported(m, "huggingface")
    if why:
        raise AiaynError(f"cannot export to huggingface: {why}")
    return MarianConfig(
        vocab_size=vocab_size or m.vocab_size,
        d_model=m.d_model,
        encoder_layers=m.n_layers,
        decoder_layers=m.decoder_layers,
        encoder_attention_heads=m.n_heads,
        decoder_attention_heads=m.n_heads,
        encoder_ffn_dim=m.d_ff,
        decoder_ffn_dim=m.d_ff,
        activation_function="relu",
        max_position_embeddings=m.max_len,
        scale_embedding=True,
        share_encoder_decoder_embeddings=m.tie_embeddings == "all",
        tie_word_embeddings=m.tie_embeddings != "none",
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,
        dropout=m.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


def marian_state_dict(model: Transformer) -> dict[str, Tensor]:
    """aiayn's weights under Marian's names, residual dimensions permuted."""
    perm = residual_permutation(model.cfg.d_model)
    state: dict[str, Tensor] = {}

    def reads(name: str, linear: torch.nn.Linear) -> None:  # input from the residual stream
        state[f"{name}.weight"], state[f"{name}.bias"] = linear.weight[:, perm], linear.bias

    def writes(name: str, linear: torch.nn.Linear) -> None:  # output into the residual stream
        state[f"{name}.weight"], state[f"{name}.bias"] = linear.weight[perm], linear.bias[perm]

    def norm(name: str, layer_norm: torch.nn.LayerNorm) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = layer_norm.weight[perm], layer_norm.bias[perm]

    def attention(name: str, mha: Any) -> None:
        for ours, theirs in ((mha.w_q, "q_proj"), (mha.w_k, "k_proj"), (mha.w_v, "v_proj")):
            reads(f"{name}.{theirs}", ours)
        writes(f"{name}.out_proj", mha.w_o)

    state["model.shared.weight"] = model.encoder.embedding.tokens.weight[:, perm]  # (V, D)
    state["model.encoder.embed_tokens.weight"] = state["model.shared.weight"]
    state["model.decoder.embed_tokens.weight"] = model.decoder.embedding.tokens.weight[:, perm]
    state["lm_head.weight"] = model.out_proj.weight[:, perm]
    for i, layer in enumerate(model.encoder.layers):
        p = f"model.encoder.layers.{i}"
        attention(f"{p}.self_attn", layer.self_attn)
        norm(f"{p}.self_attn_layer_norm", layer.res_attn.norm)
        reads(f"{p}.fc1", layer.ffn.w_1)
        writes(f"{p}.fc2", layer.ffn.w_2)
        norm(f"{p}.final_layer_norm", layer.res_ffn.norm)
    for i, layer in enumerate(model.decoder.layers):
        p = f"model.decoder.layers.{i}"
        attention(f"{p}.self_attn", layer.self_attn)
        norm(f"{p}.self_attn_layer_norm", layer.res_self.norm)
        attention(f"{p}.encoder_attn", layer.cross_attn)
        norm(f"{p}.encoder_attn_layer_norm", layer.res_cross.norm)
        reads(f"{p}.fc1", layer.ffn.w_1)
        writes(f"{p}.fc2", layer.ffn.w_2)
        norm(f"{p}.final_layer_norm", layer.res_ffn.norm)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def marian_from_aiayn(model: Transformer) -> Any:
    """A Hugging Face ``MarianMTModel`` computing the same function as ``model`` (eval mode),
    generating as aiayn does: from BOS, PAD and BOS never generated."""
    from transformers import MarianMTModel

    config = marian_config(model.cfg)
    with torch.device("cpu"):
        marian = MarianMTModel(config)
    state = marian.state_dict()
    ours = {k: v for k, v in marian_state_dict(model).items() if k in state}
    missing = (
        set(state)
        - set(ours)
        - {"final_logits_bias", "model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}
    )
    if missing:
        raise RuntimeError(f"Marian weights not covered by the transfer: {sorted(missing)[:3]}")
    state.update(ours)
    marian.load_state_dict(state)
    generation = marian.generation_config
    generation.decoder_start_token_id, generation.bos_token_id = BOS_ID, BOS_ID
    generation.eos_token_id, generation.pad_token_id, generation.forced_eos_token_id = EOS_ID, PAD_ID, None
    generation.suppress_tokens = list(BANNED)
    return marian.eval()


def write_folder(model: Transformer, config: Config, tokenizer: Any, folder: Path, meta: dict) -> None:
    marian = marian_from_aiayn(model)
    d = config.decode
    generation = marian.generation_config
    generation.num_beams, generation.max_length = d.beam_size, config.model.max_len
    generation.length_penalty = d.alpha if d.length_penalty != "none" else 0.0
    marian.save_pretrained(folder)
    for name in ("source.spm", "target.spm"):  # one joint model serves both sides
        shutil.copyfile(tokenizer.model_path, folder / name)
    tokens = vocabulary(tokenizer, config.model.vocab_size)
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "MarianTokenizer",
                "source_lang": meta.get("src_lang"),
                "target_lang": meta.get("tgt_lang"),
                "model_max_length": config.model.max_len,
                "separate_vocabs": False,
                "unk_token": "<unk>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
            },
            indent=2,
        ),
        encoding="utf-8",
    )

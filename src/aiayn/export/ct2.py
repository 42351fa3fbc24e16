"""``--to ctranslate2``: a CTranslate2 ``TransformerSpec`` written from aiayn's weights directly,
with aiayn's own position table (no permutation; learned positions and pre-norm fit too), EOS
appended to the source by CTranslate2 itself, and the SentencePiece model beside it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aiayn.config import BOS_ID, EOS_ID, UNK_ID, AiaynError, Config
from aiayn.export.common import token_strings, unsupported, vocabulary
from aiayn.models.transformer import Transformer


def ctranslate2_spec(model: Transformer, tokens: list[str]) -> Any:
    """A CTranslate2 ``TransformerSpec`` holding ``model``'s weights; ``tokens`` names the ids."""
    from ctranslate2.specs import TransformerSpec

    m = model.cfg
    why = unsupported(m, "ctranslate2")
    if why:
        raise AiaynError(f"cannot export to ctranslate2: {why}")
    spec = TransformerSpec.from_config((m.n_layers, m.decoder_layers), m.n_heads, pre_norm=m.norm == "pre")

    def array(t: Tensor) -> Any:
        return t.detach().cpu().float().numpy()

    def linear(spec_linear: Any, *layers: torch.nn.Linear) -> None:  # several layers: one fused matrix
        spec_linear.weight = array(torch.cat([layer.weight for layer in layers]))
        spec_linear.bias = array(torch.cat([layer.bias for layer in layers]))

    def norm(spec_norm: Any, layer_norm: torch.nn.LayerNorm) -> None:
        spec_norm.gamma, spec_norm.beta = array(layer_norm.weight), array(layer_norm.bias)

    def stack(spec_stack: Any, ours: Any) -> None:
        embedding = ours.embedding
        table = (
            embedding.positions.learned.weight if embedding.positions.learned is not None else embedding.positions.table
        )
        spec_stack.position_encodings.encodings = array(table)  # (max_len, D), §3.5's layout
        spec_stack.scale_embeddings = True  # × √d_model (§3.4)
        if m.norm == "pre":
            norm(spec_stack.layer_norm, ours.final_norm)

    stack(spec.encoder, model.encoder)
    spec.encoder.embeddings[0].weight = array(model.encoder.embedding.tokens.weight)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder.layers):
        attn = layer.self_attn
        linear(layer_spec.self_attention.linear[0], attn.w_q, attn.w_k, attn.w_v)
        linear(layer_spec.self_attention.linear[1], attn.w_o)
        norm(layer_spec.self_attention.layer_norm, layer.res_attn.norm)
        linear(layer_spec.ffn.linear_0, layer.ffn.w_1)
        linear(layer_spec.ffn.linear_1, layer.ffn.w_2)
        norm(layer_spec.ffn.layer_norm, layer.res_ffn.norm)
    stack(spec.decoder, model.decoder)
    spec.decoder.embeddings.weight = array(model.decoder.embedding.tokens.weight)
    spec.decoder.projection.weight = array(model.out_proj.weight)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder.layers):
        attn, cross = layer.self_attn, layer.cross_attn
        linear(layer_spec.self_attention.linear[0], attn.w_q, attn.w_k, attn.w_v)
        linear(layer_spec.self_attention.linear[1], attn.w_o)
        norm(layer_spec.self_attention.layer_norm, layer.res_self.norm)
        linear(layer_spec.attention.linear[0], cross.w_q)
        linear(layer_spec.attention.linear[1], cross.w_k, cross.w_v)
        linear(layer_spec.attention.linear[2], cross.w_o)
        norm(layer_spec.attention.layer_norm, layer.res_cross.norm)
        linear(layer_spec.ffn.linear_0, layer.ffn.w_1)
        linear(layer_spec.ffn.linear_1, layer.ffn.w_2)
        norm(layer_spec.ffn.layer_norm, layer.res_ffn.norm)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    config = spec.config
    config.unk_token, config.bos_token, config.eos_token = tokens[UNK_ID], tokens[BOS_ID], tokens[EOS_ID]
    config.decoder_start_token = tokens[BOS_ID]  # §3: the decoder starts from BOS's embedding
    config.add_source_eos = True  # aiayn's source rows end with EOS (batching.source_row)
    config.layer_norm_epsilon = model.encoder.layers[0].res_attn.norm.eps
    return spec


def ct2_from_aiayn(
    model: Transformer, out_dir: Path, tokens: list[str] | None = None, *, quantization: str | None = None
) -> Path:
    """Write ``model`` as a CTranslate2 model folder ``out_dir`` (replaced if it exists), its
    tokens named ``tokens`` (default ``token_strings``), weights stored as ``quantization``."""
    from ctranslate2.converters import Converter

    spec = ctranslate2_spec(model, tokens or token_strings(model.cfg.vocab_size))

    class SpecConverter(Converter):
        def _load(self) -> Any:
            return spec

    SpecConverter().convert(str(out_dir), quantization=quantization, force=True)
    return Path(out_dir)


def write_folder(model: Transformer, config: Config, tokenizer: Any, folder: Path, quantization: str | None) -> None:
    ct2_from_aiayn(model, folder, vocabulary(tokenizer, config.model.vocab_size), quantization=quantization)
    shutil.copyfile(tokenizer.model_path, folder / "spm.model")

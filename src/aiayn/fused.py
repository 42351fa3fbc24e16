"""One decoding step of the Transformer with fewer, larger operators: what ``Translator`` runs.

``Transformer.decode(tokens, cache=cache)`` is the reference: the paper's modules, one call per
projection, dropout and residual block. At one new token per row a step is a few hundred small
operators, and on a CPU their fixed costs (module calls, dispatch) take about as long as the
arithmetic. ``FusedDecoder`` computes the same function from the same weights with:

- Q, K and V of self-attention in one matmul ([W^Q; W^K; W^V] stacked), with Eq. 1's 1/√d_k
  folded into W^Q and its bias (so no scaling of the scores);
- plain function calls in place of modules, nothing for dropout (inference);
- each linear map in the inference format of ``aiayn.quantize``: float32 packed once for oneDNN on
  a CPU, or int8. The maps used as they are (W^O, the FFN, the output projection) are the layers of
  the model's inference copy (``pack_model`` or ``quantize_model``), called directly, not copied.

The stacked and scaled matrices (self-attention's Q/K/V, cross-attention's W^Q) are copies made
when it is built; ``current()`` says whether the model's parameters have changed since, and a
``Translator`` then falls back to the inference copy itself.
The state is the model's ``DecoderCache``, passed in and returned as with ``Transformer.decode``.
tests/test_fused.py checks it against ``Transformer.decode`` for every norm placement, position
kind and embedding tying, through beam reorders.

Shape legend: B sentences, N decoder rows = B × beam, H heads, t positions filled, S source
length, D d_model, V vocabulary, d_k / d_v per-head widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aiayn.attention import fold_beams, unfold_beams
from aiayn.cache import DecoderCache
from aiayn.layers import Linear
from aiayn.model import Transformer
from aiayn.quantize import Int8Linear, pack_linear, version

LinearFn = Callable[[Tensor], Tensor]


def _linear(weight: Tensor, bias: Tensor, quantize: str | None) -> LinearFn:
    """x -> x Wᵀ + b for a derived matrix, in the inference format: int8, float32 packed for oneDNN
    (CPU), or plain."""
    layer = Linear(weight.size(1), weight.size(0), device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    layer = Int8Linear(layer) if quantize == "int8" else pack_linear(layer)
    return layer.forward  # called directly: no hooks to run, and a module call costs a few µs


def _norm(norm: nn.LayerNorm) -> Callable[[Tensor], Tensor]:
    shape, weight, bias, eps = norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps
    return lambda x: F.layer_norm(x, shape, weight, bias, eps)


def _softmax(scores: Tensor) -> Tensor:
    """Over the keys, in at least float32 as the model's attention (docs/pitfalls.md: "Softmax precision")."""
    return scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))


@dataclass
class _Layer:
    qkv: LinearFn  # (N, D) -> (N, H·d_k + H·d_k + H·d_v): Q (scaled by 1/√d_k), K, V of self-attention
    self_out: LinearFn  # W^O of self-attention
    cross_q: LinearFn  # W^Q of encoder–decoder attention, scaled by 1/√d_k
    cross_out: LinearFn
    ffn_1: LinearFn
    ffn_2: LinearFn
    norms: tuple[Callable[[Tensor], Tensor], ...]  # self, cross, FFN residual blocks


class FusedDecoder:
    """``Transformer.decode`` for one new token per row, at inference (see the module doc)."""

    def __init__(self, model: Transformer, inference: Transformer, *, quantize: str | None = None):
        """``model``: the float model, whose weights make the stacked and scaled matrices;
        ``inference``: its copy from ``pack_model`` or ``quantize_model(model, quantize)``."""
        cfg = model.cfg
        self.model, self.pre_norm = model, cfg.norm == "pre"
        self.n_heads, self.d_k, self.d_v = cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v
        self.sources = [(p, version(p)) for p in model.parameters()]
        scale = 1 / math.sqrt(self.d_k)
        self.layers = []
        for layer, fast in zip(model.decoder.layers, inference.decoder.layers):
            a, c = layer.self_attn, layer.cross_attn
            qkv_w = torch.cat([a.w_q.weight * scale, a.w_k.weight, a.w_v.weight])  # [W^Q/√d_k; W^K; W^V]
            qkv_b = torch.cat([a.w_q.bias * scale, a.w_k.bias, a.w_v.bias])
            self.layers.append(
                _Layer(
                    qkv=_linear(qkv_w, qkv_b, quantize),
                    self_out=fast.self_attn.w_o.forward,
                    cross_q=_linear(c.w_q.weight * scale, c.w_q.bias * scale, quantize),
                    cross_out=fast.cross_attn.w_o.forward,
                    ffn_1=fast.ffn.w_1.forward,
                    ffn_2=fast.ffn.w_2.forward,
                    norms=tuple(_norm(r.norm) for r in (layer.res_self, layer.res_cross, layer.res_ffn)),
                )
            )
        final = model.decoder.final_norm
        self.final_norm = _norm(final) if isinstance(final, nn.LayerNorm) else None
        self.embedding = model.decoder.embedding
        self.out = inference.out_proj.forward

    def current(self) -> bool:
        """Whether the model's parameters are still those this copy was made from."""
        return all(version(p) == seen for p, seen in self.sources)

    def _residual(self, x: Tensor, sublayer: Callable[[Tensor], Tensor], norm: Callable[[Tensor], Tensor]) -> Tensor:
        """§3.1's residual block without dropout: post-norm LN(x + f(x)) or pre-norm x + f(LN(x))."""
        return x + sublayer(norm(x)) if self.pre_norm else norm(x + sublayer(x))

    def step(self, tokens: Tensor, cache: DecoderCache) -> tuple[Tensor, DecoderCache]:
        """tokens (N,) at position t = ``cache.length`` -> logits (N, V) and the advanced cache
        (it supersedes the one passed in), as ``Transformer.decode(tokens[:, None], cache=cache)``."""
        if tokens.size(0) != cache.rows:
            raise ValueError(f"step: {tokens.size(0)} rows of new tokens for a cache of {cache.rows} rows")
        cache = cache.reserve(1)
        t, n, h = cache.length, cache.rows, self.n_heads
        e = self.embedding  # §3.4–3.5 without dropout, whatever mode the model was left in
        x = F.embedding(tokens, e.tokens.weight) * e.scale + e.positions(1, offset=t)  # (N, D)
        for layer, (k_buf, v_buf), cross in zip(self.layers, cache.in_use(), cache.cross_kv):

            def self_attention(x: Tensor, layer=layer, k_buf=k_buf, v_buf=v_buf) -> Tensor:
                q, k, v = layer.qkv(x).split([h * self.d_k, h * self.d_k, h * self.d_v], dim=-1)  # (N, H·d) each
                k_buf[:, :, t] = k.view(n, h, self.d_k)  # written in place at position t
                v_buf[:, :, t] = v.view(n, h, self.d_v)
                scores = q.view(n, h, 1, self.d_k) @ k_buf[:, :, : t + 1].transpose(-2, -1)  # (N, H, 1, t+1)
                out = _softmax(scores).to(v.dtype) @ v_buf[:, :, : t + 1]  # (N, H, 1, d_v)
                return layer.self_out(out.view(n, h * self.d_v))

            def cross_attention(x: Tensor, layer=layer, cross=cross) -> Tensor:
                q = fold_beams(layer.cross_q(x).view(n, h, 1, self.d_k), cache.beam)  # (B, H, beam, d_k)
                scores = (q @ cross[0].transpose(-2, -1)).masked_fill(~cache.src_mask, float("-inf"))  # (B, H, beam, S)
                out = unfold_beams(_softmax(scores).to(cross[1].dtype) @ cross[1], cache.beam)  # (N, H, 1, d_v)
                return layer.cross_out(out.reshape(n, h * self.d_v))

            x = self._residual(x, self_attention, layer.norms[0])
            x = self._residual(x, cross_attention, layer.norms[1])
            x = self._residual(x, lambda x, layer=layer: layer.ffn_2(F.relu(layer.ffn_1(x))), layer.norms[2])
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.out(x), cache.advance(1)

"""One decoding step of the Transformer with fewer, larger operators: what ``Translator`` runs.

``Transformer.decode(tokens, cache=cache)`` is the reference: the paper's modules, one call per
projection, dropout and residual block. At one new token per row a step is a few hundred small
operators, and on a CPU their fixed costs (module calls, dispatch) take about as long as the
arithmetic. ``FusedDecoder`` computes the same function from the same weights with:

- Q, K and V of self-attention in one matmul ([W^Q; W^K; W^V] stacked), with Eq. 1's 1/√d_k
  folded into W^Q and its bias (so no scaling of the scores);
- plain function calls in place of modules, nothing for dropout (inference), ``bmm`` on
  (N·H, ·, d) views of the cache instead of broadcasting ``matmul``, the FFN's ReLU inside its
  first matmul;
- each linear map in the inference format of ``aiayn.inference.quantize``: float32 packed once for oneDNN on
  a CPU, or int8. The maps used as they are (W^O, the FFN, the output projection) are the layers of
  the model's inference copy (``pack_model`` or ``quantize_model``), called directly, not copied.

The stacked and scaled matrices (self-attention's Q/K/V, cross-attention's W^Q) are copies made
when it is built; ``current()`` says whether the model's parameters have changed since, and a
``Translator`` then falls back to the inference copy itself.
The state is the model's ``DecoderCache``, passed in and returned as with ``Transformer.decode``.
tests/inference/test_fused.py checks it against ``Transformer.decode`` for every norm placement, position
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

from aiayn.inference.quantize import Int8Linear, PackedLinear, pack_linear, version
from aiayn.models.cache import DecoderCache
from aiayn.models.layers import ONEDNN_LINEAR, Linear, float32_cpu_inference
from aiayn.models.transformer import Transformer


class _Map:
    """x (N, in) -> x Wᵀ + b (N, out), ReLU'd when ``relu``: one linear layer of the step.

    ``PackedLinear.forward`` checks, at every call, that the packed weight is usable (float32 CPU
    inference, weight unchanged), then which kernel suits the rows, and below the packing
    threshold calls ``Linear.forward``, which checks again: 7–14 % of the linear layers' time at
    1–4 rows. Here the weights are vouched for once per batch (``current()``) and the inference
    mode once per step (``direct``), so a call only picks the kernel: packed from the layer's own
    ``min_rows``, as ``PackedLinear`` would, with the FFN's ReLU computed inside oneDNN's matmul.
    Int8 and unpacked layers run their own ``forward``."""

    __slots__ = ("forward", "weight", "bias", "packed", "min_rows", "relu")

    def __init__(self, layer: nn.Module, *, relu: bool = False):
        self.forward, self.relu = layer.forward, relu  # called directly: no hooks, no module call
        self.packed = layer.packed if isinstance(layer, PackedLinear) else None
        if self.packed is not None:
            self.weight, self.bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
            self.min_rows = layer.min_rows

    def __call__(self, x: Tensor, direct: bool) -> Tensor:
        if self.packed is not None and direct:
            if x.size(0) >= self.min_rows:
                return ONEDNN_LINEAR(x, self.packed, self.bias, "relu" if self.relu else "none", [], "")
            y = F.linear(x, self.weight, self.bias)
        else:
            y = self.forward(x)
        return F.relu(y) if self.relu else y


def _derived(weight: Tensor, bias: Tensor, quantize: str | None) -> _Map:
    """x -> x Wᵀ + b for a derived matrix, in the inference format: int8, float32 packed for oneDNN
    (CPU), or plain."""
    layer = Linear(weight.size(1), weight.size(0), device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return _Map(Int8Linear(layer) if quantize == "int8" else pack_linear(layer))


def _norm(norm: nn.LayerNorm) -> Callable[[Tensor], Tensor]:
    shape, weight, bias, eps = norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps
    return lambda x: F.layer_norm(x, shape, weight, bias, eps)


def _softmax(scores: Tensor) -> Tensor:
    """Over the keys, in at least float32 as the model's attention (docs/pitfalls.md: "Softmax precision")."""
    return scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))


@dataclass
class _Layer:
    qkv: _Map  # (N, D) -> (N, H·d_k + H·d_k + H·d_v): Q (scaled by 1/√d_k), K, V of self-attention
    self_out: _Map  # W^O of self-attention
    cross_q: _Map  # W^Q of encoder–decoder attention, scaled by 1/√d_k
    cross_out: _Map
    ffn_1: _Map  # with Eq. 2's ReLU
    ffn_2: _Map
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
                    qkv=_derived(qkv_w, qkv_b, quantize),
                    self_out=_Map(fast.self_attn.w_o),
                    cross_q=_derived(c.w_q.weight * scale, c.w_q.bias * scale, quantize),
                    cross_out=_Map(fast.cross_attn.w_o),
                    ffn_1=_Map(fast.ffn.w_1, relu=True),
                    ffn_2=_Map(fast.ffn.w_2),
                    norms=tuple(_norm(r.norm) for r in (layer.res_self, layer.res_cross, layer.res_ffn)),
                )
            )
        final = model.decoder.final_norm
        self.final_norm = _norm(final) if isinstance(final, nn.LayerNorm) else None
        self.embedding = model.decoder.embedding
        self.out = _Map(inference.out_proj)

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
        t, n, h, d_k, d_v, beam = cache.length, cache.rows, self.n_heads, self.d_k, self.d_v, cache.beam
        b = n // beam
        e = self.embedding  # §3.4–3.5 without dropout, whatever mode the model was left in
        x = F.embedding(tokens, e.tokens.weight) * e.scale + e.positions(1, offset=t)  # (N, D)
        direct = float32_cpu_inference(x, e.tokens.weight)  # the packed kernels apply (see _Map)
        for layer, (k_buf, v_buf), (cross_k, cross_v) in zip(self.layers, cache.in_use(), cache.cross_kv):

            def self_attention(x: Tensor, layer=layer, k_buf=k_buf, v_buf=v_buf) -> Tensor:
                q, k, v = layer.qkv(x, direct).split([h * d_k, h * d_k, h * d_v], dim=-1)  # (N, H·d) each
                k_buf[:, :, t] = k.view(n, h, d_k)  # written in place at position t
                v_buf[:, :, t] = v.view(n, h, d_v)
                keys = k_buf[:, :, : t + 1].view(n * h, t + 1, d_k)  # (N·H, t+1, d_k), a view of the buffer
                scores = torch.bmm(q.reshape(n * h, 1, d_k), keys.transpose(1, 2))  # (N·H, 1, t+1)
                out = torch.bmm(_softmax(scores).to(v.dtype), v_buf[:, :, : t + 1].view(n * h, t + 1, d_v))
                return layer.self_out(out.view(n, h * d_v), direct)  # out: (N·H, 1, d_v)

            def cross_attention(x: Tensor, layer=layer, cross_k=cross_k, cross_v=cross_v) -> Tensor:
                # A sentence's beams are queries against its one copy of the keys (attention.fold_beams).
                q = layer.cross_q(x, direct).view(b, beam, h, d_k).transpose(1, 2)  # (B, H, beam, d_k)
                s = cross_k.size(2)
                keys = cross_k.view(b * h, s, d_k)  # (B·H, S, d_k)
                scores = torch.bmm(q.reshape(b * h, beam, d_k), keys.transpose(1, 2))  # (B·H, beam, S)
                scores = torch.where(cache.src_mask, scores.view(b, h, beam, s), float("-inf"))  # (B, H, beam, S)
                out = torch.bmm(_softmax(scores).to(cross_v.dtype).view(b * h, beam, s), cross_v.view(b * h, s, d_v))
                out = out.view(b, h, beam, d_v).transpose(1, 2)  # (B, beam, H, d_v)
                return layer.cross_out(out.reshape(n, h * d_v), direct)

            x = self._residual(x, self_attention, layer.norms[0])
            x = self._residual(x, cross_attention, layer.norms[1])
            x = self._residual(x, lambda x, layer=layer: layer.ffn_2(layer.ffn_1(x, direct), direct), layer.norms[2])
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.out(x, direct), cache.advance(1)

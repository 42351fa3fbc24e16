"""Inference copies of the network's linear layers on a CPU: int8 (``--quantize int8``), or
float32 with the weights laid out once for oneDNN (what every float32 ``Translator`` runs).

int8, dynamic quantization: every linear layer of the network (the attention projections, the
FFN and the output projection) keeps its weight as int8 with one scale per output row, w ≈ scale · q with q in
[-127, 127]. At each call the input is quantized to 8 bits from its own range ("dynamic"), the
products are summed in int32 by PyTorch's quantized CPU kernels (fbgemm or oneDNN) and the sums
are rescaled to float32. Embeddings, LayerNorm, softmax and the search stay float32.

The output projection shares its matrix with the embeddings (§3.4): the int8 copy belongs to
the projection alone, and the embeddings keep reading the float32 original.

    model = quantize_model(model, "int8")     # a copy; ``model`` itself is left as it was

float32: oneDNN multiplies in a blocked weight layout of its own. Given the plain (out, in)
matrix, it converts it on every call; ``pack_model`` converts each weight once, in a copy of the
model that shares the parameters (same ``state_dict``); the converted weights take as much memory
again as the linear layers' own. The arithmetic is float32 all the same; the results differ from
PyTorch's only in summation order.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from aiayn.config import AiaynError
from aiayn.models.layers import ONEDNN_LINEAR, Linear, float32_cpu_inference

QUANTIZATIONS = ("int8",)


class Int8Linear(nn.Module):
    """y ≈ x Wᵀ + b with W in int8 (per-row scales) and x quantized per call (see the module doc).

    Activations are quantized to 7 bits (``reduce_range``), PyTorch's default on x86: CPUs
    without VNNI add pairs of 8-bit products into 16 bits, which full-range inputs could
    saturate."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float().cpu()  # (out, in)
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()  # (out,)
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # PyTorch announces the end of quantized tensors, which its dynamic int8 kernels still
            # take (as quantize_dynamic does); tests/inference/test_quantize.py fails the day they are gone.
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int8 per row"


def check_quantization(kind: str | None, device: torch.device | str | None = None) -> None:
    """A one-line error for a quantization aiayn cannot run here (None: full precision)."""
    if kind is None:
        return
    if kind not in QUANTIZATIONS:
        raise AiaynError(f"unknown --quantize '{kind}' (choose from {', '.join(QUANTIZATIONS)})")
    if device is not None and torch.device(device).type != "cpu":
        raise AiaynError(f"--quantize {kind} runs on the CPU only; use --device cpu")
    if torch.backends.quantized.engine == "none":
        raise AiaynError(
            f"--quantize {kind}: this PyTorch build has no quantized CPU kernels "
            f"(supported engines: {torch.backends.quantized.supported_engines})"
        )


def quantize_model(model: nn.Module, kind: str) -> nn.Module:
    """A CPU copy of ``model`` (for inference) whose ``nn.Linear`` layers are ``Int8Linear``."""
    check_quantization(kind, "cpu")
    quantized = copy.deepcopy(model).cpu().eval()
    for module in list(quantized.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return quantized


def _onednn_reorder() -> Any:
    """oneDNN's weight conversion for ``ONEDNN_LINEAR`` (``None`` in builds without it)."""
    if ONEDNN_LINEAR is None or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return None
    return torch.ops.mkldnn._reorder_linear_weight


ONEDNN_REORDER = _onednn_reorder()
# The batch size oneDNN chooses the weight layout for. Any value from 4 to 256 measured the same
# at decoding shapes (1 to 128 rows); a layout chosen for one row is a matrix-vector one, slower.
PACK_ROWS = 64
# Below this many multiply-adds per call (rows × in × out) PyTorch's default path measured faster
# than the packed one: a 256 × 256 layer from 4 rows, a 256 × 8,000 output projection from 1 row.
PACKED_MIN_MACS = 2**18


def version(t: Tensor) -> int | None:
    """``t``'s version counter, which every in-place change bumps (an optimizer step, a state
    load); None for a tensor made under ``torch.inference_mode``, which has none and which
    autograd, hence training, cannot change."""
    return None if t.is_inference() else t._version


class PackedLinear(Linear):
    """A ``Linear`` that also keeps its float32 weight in oneDNN's own layout, converted once.

    At decoding shapes this measured 1.1–1.2× faster than ``Linear``'s oneDNN call at 128 rows
    and up to 2.3× at 4 rows (the output projection over the vocabulary), on the AMD CPU of
    docs/performance.md. The weight and bias are the source layer's own parameters; if they change
    after packing (e.g. training goes on), ``weight._version`` tells, and the layer reads them as
    ``Linear`` does instead of the stale copy.
    """

    def __init__(self, linear: Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared, not copied
        self.packed = ONEDNN_REORDER(linear.weight.detach(), PACK_ROWS)
        self.packed_version = version(linear.weight)
        self.min_rows = -(-PACKED_MIN_MACS // (self.in_features * self.out_features))  # packed from here

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        """A copy packed anew (oneDNN's layout is opaque to ``copy``), e.g. for ``quantize_model``."""
        twin = Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        twin.weight, twin.bias = copy.deepcopy(self.weight, memo), copy.deepcopy(self.bias, memo)
        return PackedLinear(twin).train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.numel() >= self.min_rows * self.in_features
            and float32_cpu_inference(x, self.weight)
            and version(self.weight) == self.packed_version
        ):
            return ONEDNN_LINEAR(x, self.packed, self.bias, "none", [], "")
        return super().forward(x)


def pack_linear(linear: Linear) -> Linear:
    """``linear`` as a ``PackedLinear`` where oneDNN can pack it (float32 on a CPU), else itself."""
    weight = linear.weight
    if ONEDNN_REORDER is None or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return linear
    return PackedLinear(linear)


def pack_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``Linear`` layers are ``PackedLinear``, sharing its parameters and
    buffers; ``model`` itself when it is not float32 on a CPU or this PyTorch lacks oneDNN."""
    weights = list(itertools.chain(model.parameters(), model.buffers()))
    if ONEDNN_REORDER is None or any(w.device.type != "cpu" for w in weights):
        return model
    if any(w.dtype != torch.float32 for w in model.parameters()):
        return model
    packed = copy.deepcopy(model, memo={id(w): w for w in weights})  # new modules, same tensors
    for module in list(packed.modules()):
        for name, child in module.named_children():
            if type(child) is Linear:
                setattr(module, name, PackedLinear(child))
    return packed

"""int8 CPU inference: dynamic quantization of the linear layers (``--quantize int8``).

Every linear layer of the network (the attention projections, the FFN and the output
projection) keeps its weight as int8 with one scale per output row, w ≈ scale · q with q in
[-127, 127]. At each call the input is quantized to 8 bits from its own range ("dynamic"), the
products are summed in int32 by PyTorch's quantized CPU kernels (fbgemm or oneDNN) and the sums
are rescaled to float32. Embeddings, LayerNorm, softmax and the search stay float32.

The output projection shares its matrix with the embeddings (§3.4): the int8 copy belongs to
the projection alone, and the embeddings keep reading the float32 original.

    model = quantize_model(model, "int8")     # a copy; ``model`` itself is left as it was
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from aiayn.config import AiaynError

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
            # take (as quantize_dynamic does); tests/test_quantize.py fails the day they are gone.
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

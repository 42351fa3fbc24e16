"""The layers Table 1 compares, and the probes that measure one of them (§4).

- the layers: aiayn's self-attention (fused, or with Eq. 1's weights materialised), one
  ``torch.nn.LSTM`` layer, and ConvS2S's causal convolution with a gated linear unit (contiguous
  or dilated), each mapping (B, n, d) to (B, n, d);
- ``measure``: CPU and wall-clock time of a forward and backward, and its peak tensor memory
  (``peak_bytes``, from ``torch.profiler``'s allocation records);
- ``path_layers``: how many stacked layers until output position n depends on input position 1;
- ``fit_slope``: the log-log slope that turns the times into an exponent of n.

``claims/complexity.py`` runs them over lengths and draws Table 1 from the results.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from aiayn.config import AiaynError
from aiayn.models.attention import MultiHeadAttention

PROBE_WIDTH = 8  # d_model of the path-length probe: whether a gradient is zero does not depend on it


class SelfAttention(nn.Module):
    """aiayn's ``MultiHeadAttention`` as a self-attention layer, d_k = d_v = d / heads (§3.2.2)."""

    def __init__(self, d_model: int, heads: int, *, explicit: bool = False):
        super().__init__()
        self.mha, self.explicit = MultiHeadAttention(d_model, heads, d_model // heads, d_model // heads), explicit

    def forward(self, x: Tensor) -> Tensor:  # (B, n, d) -> (B, n, d)
        return self.mha(x, self.mha.project_kv(x), need_weights=self.explicit)[0]


class Recurrent(nn.Module):
    """One LSTM layer, d inputs and d hidden units: n steps, each waiting for the one before."""

    def __init__(self, d_model: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]


class CausalConv(nn.Module):
    """ConvS2S's layer: Conv1d to 2d channels, then GLU; position i sees positions
    i - (k - 1)·dilation … i (left padding, so n outputs for n inputs)."""

    def __init__(self, d_model: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(d_model, 2 * d_model, kernel, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.pad(x.transpose(1, 2), (self.pad, 0)))  # (B, 2d, n)
        return F.glu(y, dim=1).transpose(1, 2)  # (B, n, d)


# Each kind's layer from (d_model, heads, kernel, depth in a stack).
_BUILD: dict[str, Callable[[int, int, int, int], nn.Module]] = {
    "self-attention": lambda d, heads, k, i: SelfAttention(d, heads),
    "self-attention, Eq. 1 unfused": lambda d, heads, k, i: SelfAttention(d, heads, explicit=True),
    "recurrent (LSTM)": lambda d, heads, k, i: Recurrent(d),
    "convolutional (GLU)": lambda d, heads, k, i: CausalConv(d, k),
    # dilation k^i in layer i, as ByteNet and WaveNet: O(log_k(n)) paths
    "convolutional, dilated": lambda d, heads, k, i: CausalConv(d, k, dilation=k**i),
}
LAYERS = tuple(_BUILD)


def make_layer(kind: str, d_model: int, *, heads: int, kernel: int, index: int = 0) -> nn.Module:
    """A layer of ``kind`` (a name of ``LAYERS``); ``index`` is its depth in a stack
    (a dilated convolution's layer i has dilation kernel^i)."""
    if kind not in _BUILD:
        raise AiaynError(f"unknown layer kind '{kind}' (choose from {', '.join(LAYERS)})")
    return _BUILD[kind](d_model, heads, kernel, index)


@contextmanager
def _quiet_stderr():
    """The profiler's library writes a line to file descriptor 2 at each start and stop."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_bytes(fn: Callable[[], None]) -> int:
    """The most tensor bytes allocated at once while ``fn`` runs, above those held when it starts:
    PyTorch's CPU allocation and free records from ``torch.profiler``, summed in time order. ``fn``
    should free nothing it did not allocate: such a free would lower the count below its start."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for _, nbytes in sorted(records, key=lambda r: r[0]):  # stable: same-time records keep their order
        held += nbytes
        peak = max(peak, held)
    return peak


def measure(layer: nn.Module, n: int, *, batch: int, d_model: int, warmup: int, repeats: int) -> dict:
    """Forward + backward of ``layer`` on a (batch, n, d_model) input, ``repeats`` times after
    ``warmup``: the median CPU seconds of this process (the slopes' time), the median wall-clock
    seconds, and the peak bytes of one more run."""
    x = torch.randn(batch, n, d_model, requires_grad=True)

    def clear() -> None:  # outside what is measured: freeing the last run's gradients would count
        layer.zero_grad(set_to_none=True)
        x.grad = None

    def step() -> None:
        layer(x).sum().backward()

    for _ in range(warmup):
        clear()
        step()
    cpu, wall = [], []
    for _ in range(repeats):
        clear()
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    clear()
    return {
        "seconds": statistics.median(cpu),
        "wall_seconds": statistics.median(wall),
        "runs": cpu,
        "peak_bytes": peak_bytes(step),
    }


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of log y against log x: the exponent b of y ≈ a·x^b."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("a slope needs at least two (x, y) points")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def path_layers(kind: str, n: int, *, kernel: int = 3, heads: int = 2, max_layers: int | None = None) -> int | None:
    """The fewest stacked layers of ``kind`` after which output position n depends on input
    position 1 (1-based): the first depth at which that gradient is nonzero; None if not within
    ``max_layers`` (default n). Every kind passes each position on to itself, so a dependence
    once there stays at every greater depth: the depth is found by doubling, then bisection."""
    torch.manual_seed(0)
    x = torch.randn(1, n, PROBE_WIDTH, dtype=torch.float64, requires_grad=True)
    outputs = [x]  # outputs[i]: after i layers

    def reaches(depth: int) -> bool:
        while len(outputs) <= depth:
            layer = make_layer(kind, PROBE_WIDTH, heads=heads, kernel=kernel, index=len(outputs) - 1)
            outputs.append(layer.double()(outputs[-1]))
        (grad,) = torch.autograd.grad(outputs[depth][0, n - 1].sum(), x, retain_graph=True)
        return bool(grad[0, 0].abs().max() > 0)

    limit, low, high = max_layers or n, 0, 1  # reaches(low) is False (no layer: position n is itself)
    while not reaches(high):
        if high >= limit:
            return None
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    return high

"""Keep PyTorch's CPU kernel caches from growing with every new batch shape during training.

Under bf16 autocast on a CPU, PyTorch runs matmuls through oneDNN, which builds a kernel (a
"primitive", with its own buffers) for each new tensor shape and keeps it in two caches of up
to 1,024 entries each: oneDNN's own (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and PyTorch's ideep layer
on top (LRU_CACHE_CAPACITY). Token-bucketed batches give almost every step a new shape, so a
bf16 run's resident memory climbed by gigabytes (docs/performance.md, "Training memory"); fp32
matmuls go through BLAS, which caches nothing per shape. Only bounding both caches stops it:
either one alone still lets the other hold every primitive. Turning them off (0 and 1 entries)
cost 12-17 % of a bf16 step, since one step's matmuls then never reuse a kernel; 16 entries each
keep that reuse (no measurable cost) and hold memory at ~100 MB above off. Both variables are
read once, when the first primitive is made, so this must run before the first bf16 matmul of
the process.
"""

from __future__ import annotations

import os

# Sized in docs/performance.md ("Training memory"): enough for one step's shapes, not a run's.
LIMITS = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}


def bound_kernel_caches() -> None:
    """Bound the per-shape kernel caches of this process, unless the user set them."""
    for name, value in LIMITS.items():
        os.environ.setdefault(name, value)

"""Training precision: float32, or bf16 autocast where this machine runs it faster.

CPUs range from ~100× slower in bf16 (AVX2 only) to several times faster (AVX512-bf16, AMX),
so on a CPU the choice is measured at the start of every run, never assumed.
"""

from __future__ import annotations

import math
import time

import torch

from aiayn.training.loss import label_smoothed_cross_entropy


def _seconds(fn, reps: int = 3) -> float:
    """Fastest of ``reps`` timed calls: the minimum is the least disturbed by other processes."""
    fn()  # warm-up: first calls pick kernels and allocate
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _probe_step_seconds(model: torch.nn.Module, batch_tokens: int) -> tuple[float | None, float]:
    """Seconds of one training step of ``model`` in fp32 and in CPU bf16 autocast; (None, inf)
    when a bf16 matmul is already no faster, so a slow CPU never runs a bf16 step."""
    a = torch.randn(512, 512)
    if _seconds(lambda: a.bfloat16() @ a.bfloat16(), 5) >= _seconds(lambda: a @ a, 5):
        return None, math.inf
    length = 32
    ids = torch.randint(4, model.cfg.vocab_size, (max(1, batch_tokens // length), length))
    mask = torch.ones_like(ids, dtype=torch.bool)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids, ids, mask, mask)
        label_smoothed_cross_entropy(logits, ids[mask], 0.1)[0].backward()
        model.zero_grad(set_to_none=True)

    return _seconds(lambda: step(False)), _seconds(lambda: step(True))


def choose_precision(
    setting: str, device: torch.device, model: torch.nn.Module, batch_tokens: int, log=print
) -> torch.dtype | None:
    """bf16 autocast on CUDA. On a CPU, bf16 only when asked, or ("auto") when a training
    step of this model measures faster in bf16 here: CPUs range from ~100× slower in bf16
    (AVX2 only) to several times faster (AVX512-bf16, AMX), and whole steps gain less than
    matmuls do. A matmul probe rules bf16 out first, so a slow CPU never runs a bf16 step."""
    if setting == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if setting == "bf16":
        return torch.bfloat16
    with torch.random.fork_rng():  # the probe's random inputs and dropout must not shift the run's stream
        fp32, bf16 = _probe_step_seconds(model, batch_tokens)
    if fp32 is None:
        log("aiayn: precision fp32 (a bf16 matmul is not faster on this CPU)")
        return None
    choice = torch.bfloat16 if bf16 < 0.9 * fp32 else None
    log(
        f"aiayn: precision {'bf16' if choice else 'fp32'} (a training step took {fp32:.3f} s in fp32, "
        f"{bf16:.3f} s in bf16 autocast on this CPU)"
    )
    return choice

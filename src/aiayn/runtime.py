"""Where a process runs: its device, its threads, its rank in a torchrun job, its random state,
how its C library's malloc treats large blocks, and which CPU it is."""

from __future__ import annotations

import ctypes
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from aiayn.config import AiaynError


def resolve_device(name: str | torch.device | None = None, *, cpu_only: bool = False) -> torch.device:
    """``name``, or by default the GPU when there is one (the CPU when ``cpu_only``, as int8
    inference is); a device that is not there is a user error. Every command defaults this way."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() and not cpu_only else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AiaynError(f"unknown device '{name}' (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise AiaynError(f"device '{name}' is not available here; use --device cpu")
    return device


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The machine a measurement ran on, for its report: the CPU model (``cpuinfo``'s first
    "model name", else what ``platform`` says), its cores and torch's version. Threads are not a
    property of the machine: each run's config records its own."""
    cpu = platform.processor() or platform.machine() or "unknown"
    try:
        lines = cpuinfo.read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(threads: int) -> Runtime:
    """One process, or one rank of a torchrun job (RANK/WORLD_SIZE/LOCAL_RANK set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        # torchrun sets OMP_NUM_THREADS=1; alone, use this process's cores (docs/pitfalls.md: "Threads").
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))
    if world_size == 1:
        return Runtime(resolve_device())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Runtime(device, dist.get_rank(), dist.get_world_size())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# glibc's mallopt parameters (malloc.h), and the values reuse_freed_memory sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 64 << 20),
    "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, 128 << 20),
}


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks below 64 MiB for reuse instead of giving them back to the
    kernel. Inference commands call this; training does not.

    Decoding allocates the same large tensors at every step (a batch's logits over the vocabulary,
    their log-softmax, the beam candidates: 4 MB each at 128 rows × 8,000). Past its mmap threshold
    glibc maps each one fresh and unmaps it when it is freed, so every step pays about a thousand
    page faults per tensor: 12–14 % of beam-4 decoding at batch 32 on the development machine
    (docs/performance.md). With the blocks kept, the process may hold up to 128 MiB of freed memory
    (the trim threshold) besides what it uses. Left alone where the user set either
    ``MALLOC_*_`` variable, and where malloc is not glibc's. Returns whether it applied."""
    if any(name in os.environ for name in MALLOC_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and macOS lack it)
    except (OSError, AttributeError):
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.values())

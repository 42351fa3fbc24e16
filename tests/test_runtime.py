"""runtime.py: reuse_freed_memory stops the page-fault churn of decoding's per-step tensors, and
leaves malloc alone where the user tuned it. Run in child processes: mallopt lasts for a process."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch

from aiayn.runtime import machine

# Decoding's pattern: each step makes and frees a batch's logits, their log-softmax and the beam
# candidates. At 128 rows × 80,000 pieces (41 MB) they are past glibc's largest automatic mmap
# threshold (32 MiB), so by default every step maps them afresh; with reuse_freed_memory (64 MiB) the
# heap keeps and reuses them. (At 8,000 pieces glibc's automatic thresholds fault on some runs and
# not on others; those 12–14 % of decoding time are measured in docs/performance.md.)
CHILD = """
import resource, torch
from aiayn.runtime import reuse_freed_memory
def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for step in range(8):
        logits = torch.ones(128, 80_000)
        log_probs = logits.log_softmax(-1)
        candidates = logits + log_probs
        del logits, log_probs, candidates
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
faults()
before = faults()
applied = reuse_freed_memory()
faults()
print(applied, before, faults())
"""

glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="malloc here is not glibc's")


def run_child(**env: str) -> tuple[bool, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@glibc
def test_reuse_freed_memory_stops_the_page_faults_of_decoding_steps():
    applied, before, after = run_child()
    assert applied
    assert before > 50_000  # 10,000 fresh pages per tensor
    assert after < before / 10, (before, after)


@glibc
def test_reuse_freed_memory_leaves_a_user_setting_alone():
    applied, _, _ = run_child(MALLOC_TRIM_THRESHOLD_="1")
    assert not applied


def test_machine_names_the_cpu_from_cpuinfo_and_falls_back_without_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nprocessor\t: 1\n")
    m = machine(cpuinfo)
    assert m["cpu"] == "AMD EPYC 9B14" and m["cores"] == os.cpu_count() and m["torch"] == torch.__version__
    assert machine(tmp_path / "missing")["cpu"]  # no cpuinfo (macOS, Windows): platform's name, never empty

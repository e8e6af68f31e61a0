"""muse_training/freed_memory.py: after keep_freed_memory_in_process, freed tensors stay in the process for reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest

ALLOCATE_AND_FREE = """
import sys
import torch
from muse_training.freed_memory import keep_freed_memory_in_process

def resident_bytes():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

if sys.argv[1] == "keep":
    assert keep_freed_memory_in_process()
before = resident_bytes()
# 100 tensors of 4 MB, each below the 32 MB up to which allocations then come from the heap: a step's activations.
tensors = [torch.ones(1 << 20) for _ in range(100)]
peak = resident_bytes()
del tensors
print(peak - before, resident_bytes() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, on Linux")
def test_freed_activations_stay_in_the_process_only_when_asked():
    grown, kept = {}, {}
    for mode in ("default", "keep"):
        result = subprocess.run(
            [sys.executable, "-c", ALLOCATE_AND_FREE, mode], capture_output=True, text=True, check=True
        )
        grown[mode], kept[mode] = map(int, result.stdout.split())
    allocated = 100 * 4 * 2**20
    assert grown["default"] > 0.9 * allocated and grown["keep"] > 0.9 * allocated
    # By default glibc hands the freed memory back to the system (the next step faults it in again) ...
    assert kept["default"] < 0.2 * allocated
    # ... and keeps it for the next step once asked.
    assert kept["keep"] > 0.9 * allocated

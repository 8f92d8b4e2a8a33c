"""rlaif.heap: with the thresholds fixed, freed large blocks go back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from rlaif.heap import steady_heap

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Frees a 16 MiB block (glibc then raises its mmap threshold to 16 MiB), allocates and touches
# 100 blocks of 256 KiB with a small block above them, frees the 100 and prints the MiB of
# anonymous memory still resident beyond what it was before they were allocated.
SCRIPT = """
import ctypes, sys
from rlaif.heap import steady_heap
if sys.argv[1] == "steady":
    assert steady_heap()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024
big = libc.malloc(16 << 20)
ctypes.memset(big, 1, 16 << 20)
libc.free(big)
before = anon()
blocks = [libc.malloc(256 << 10) for _ in range(100)]
for b in blocks:
    ctypes.memset(b, 1, 256 << 10)
pin = libc.malloc(64)
for b in blocks:
    libc.free(b)
print(anon() - before)
"""


def retained_mib(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


def test_fixed_thresholds_give_freed_blocks_back():
    assert retained_mib("default") > 20  # glibc's adjustment keeps the 25 MiB
    assert retained_mib("steady") < 3


def test_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert steady_heap() is False

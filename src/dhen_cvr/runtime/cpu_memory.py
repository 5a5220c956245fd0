"""Keep freed CPU tensor memory in the process (glibc ``mallopt``).

PyTorch's CPU allocator is plain ``malloc``. glibc serves blocks above ``M_MMAP_THRESHOLD``
(dynamic, 128 KiB at start) with ``mmap`` and gives them back with ``munmap`` on free, and
trims the heap's top above ``M_TRIM_THRESHOLD``: every training step then allocates its
activations (``B x L x D`` float32, tens of MiB) from fresh pages, and the kernel zeroes
each 4 KiB page on first touch. Retaining the memory made a 1-thread step 1.06x faster
for ``paper`` at batch 256 and ``tiny`` at 128, 1.22x for ``tiny`` at 2048
(``python -m benchmarks.bench_cpu_memory``).

:func:`retain_freed_cpu_memory` fixes the mmap threshold at glibc's maximum and turns heap
trimming off, so freed blocks are reused by the next step. The process's resident memory
stays at its high-water mark instead of breathing with each step (a few % above it in the
benchmark). Numerics are unaffected. It is a no-op (returns ``False``) where the C library
is not glibc (macOS, musl) and can be turned off with ``train.retain_cpu_memory: false``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit): blocks larger
# than that stay mmap-backed.
MMAP_THRESHOLD_BYTES = 32 << 20
TOP_PAD_BYTES = 64 << 20
_TRIM_NEVER = 2**31 - 1  # the largest value mallopt's int argument takes


@functools.cache
def retain_freed_cpu_memory() -> bool:
    """Tune glibc so freed tensor memory is reused, not returned to the OS; idempotent.

    Returns True when every setting was accepted, False where it does not apply."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (_M_TRIM_THRESHOLD, _TRIM_NEVER),
        (_M_TOP_PAD, TOP_PAD_BYTES),
    )
    return all(libc.mallopt(param, value) == 1 for param, value in settings)

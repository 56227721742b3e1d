"""The process's C allocator told to keep freed memory: glibc's `mallopt`, process-wide, opt-in.

PyTorch's CPU tensors come from `posix_memalign` and go back with `free`; it has no cache of its own on the
CPU. glibc returns a freed block of more than its mmap threshold to the system at once (`munmap`), and trims
the top of its heap once more than its trim threshold is free there, so the next tensor of that size faults
its pages in afresh — the kernel zeroes every 4 KB page on the first touch. A training step or a memory call
allocates and frees the same sizes again and again, and the faults are then a large share of the elementwise ops:
in the deep memory's forward at the dim-256 benchmark config (its [1, 2048, 768] tensors are 6 MB) SiLU's sigmoid
took 4.2 ms and an addcmul 3.8 ms with glibc's default, 0.8 and 0.3 ms with freed memory kept
(docs/performance.md, "Freed memory kept").

`keep_freed_memory()` sets glibc's three tunables so freed blocks stay in the process for reuse, as
`MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` / `MALLOC_TOP_PAD_` in the environment would (or tcmalloc /
jemalloc through `LD_PRELOAD`, which PyTorch's CPU tuning guides recommend for the same reason). Blocks below
`mmap_threshold` come from the heap and stay there after `free`; up to `trim_threshold` bytes free at the heap's
top are kept; the heap grows `top_pad` bytes beyond each request (address space; pages count only once touched).
The cost: the process's resident memory stays at its peak instead of shrinking after it. Arithmetic is
unchanged (the same ops on the same values; only where their outputs live changes).

The entry points call it (`train.py` unless `malloc_keep_freed=false`, `evaluate.py`, the speed benchmarks);
the library never does on import. On a C library other than glibc it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MIB = 1 << 20
# glibc caps M_MMAP_THRESHOLD at HEAP_MAX_SIZE / 2: 32 MiB on 64-bit (larger blocks are always mmapped; the chunk
# scan's kept states, ~130 MB a call at Qwen3-0.6B's shapes, have their own pool: titans.memory.chunk_native)
MMAP_THRESHOLD_MAX = 32 * MIB
DEFAULTS = {"mmap_threshold": 32 * MIB, "trim_threshold": 1024 * MIB, "top_pad": 256 * MIB}


def is_glibc() -> bool:
    """True where the process runs on glibc (Linux with the GNU C library), whose `mallopt` this module sets."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _check(name: str, value, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (high is not None and value > high):
        allowed = f"an int in [0, {high}]" if high is not None else "an int >= 0"
        raise ValueError(f"{name}={value!r}: allowed {allowed} (bytes).")
    return value


def keep_freed_memory(mmap_threshold: int = DEFAULTS["mmap_threshold"],
                      trim_threshold: int = DEFAULTS["trim_threshold"],
                      top_pad: int = DEFAULTS["top_pad"]) -> bool:
    """Set glibc's allocator to keep freed memory for reuse (process-wide, until the process ends).

    Returns True when set, False on a C library other than glibc (nothing changed). Bad values raise ValueError
    naming the argument before anything is set; a value glibc refuses raises RuntimeError.
    """
    values = {"mmap_threshold": _check("mmap_threshold", mmap_threshold, MMAP_THRESHOLD_MAX),
              "trim_threshold": _check("trim_threshold", trim_threshold, (1 << 31) - 1),
              "top_pad": _check("top_pad", top_pad, (1 << 31) - 1)}
    if not is_glibc():
        return False
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for name, param in (("mmap_threshold", M_MMAP_THRESHOLD), ("trim_threshold", M_TRIM_THRESHOLD),
                        ("top_pad", M_TOP_PAD)):
        if mallopt(param, values[name]) != 1:
            raise RuntimeError(f"glibc's mallopt refused {name}={values[name]}")
    return True

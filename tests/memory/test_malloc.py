"""`titans.memory.malloc.keep_freed_memory`: glibc keeps freed blocks in the process (no page faults on reuse), a
default process returns them; bad values are refused before anything is set. The allocator is process-wide, so the
behaviour is checked in fresh subprocesses."""

import json
import subprocess
import sys

import pytest

from titans.memory import malloc

PROBE = r"""
import ctypes, json, sys
import torch
from titans.memory.malloc import keep_freed_memory


class MallInfo2(ctypes.Structure):  # glibc's heap bookkeeping (malloc.h)
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory() is True
start = libc.mallinfo2()
tensors = [torch.ones(5 << 20) for _ in range(3)]  # three 20 MiB tensors alive at once, as in a step
peak = libc.mallinfo2()
del tensors
end = libc.mallinfo2()
print(json.dumps({"heap_growth": peak.arena - start.arena, "mmapped_at_peak": peak.hblkhd - start.hblkhd,
                  "heap_returned": peak.arena - end.arena}))
"""

glibc_only = pytest.mark.skipif(not malloc.is_glibc(), reason="mallopt is glibc's; elsewhere keep_freed_memory "
                                                              "does nothing and returns False")


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_blocks_stay_in_the_process_for_reuse():
    kept = probe("keep")
    assert kept["heap_growth"] >= 3 * (20 << 20) and kept["mmapped_at_peak"] == 0  # the blocks come from the heap
    assert kept["heap_returned"] == 0  # and stay there once freed: the next step's tensors fault no fresh pages
    default = probe("default")  # glibc's default: 20 MiB blocks are mmapped (unmapped at free) or, once its dynamic
    # threshold has risen, trimmed from the heap's top: either way back to the system
    assert default["mmapped_at_peak"] > 0 or default["heap_returned"] > 0


def test_bad_values_are_refused_before_anything_is_set(monkeypatch):
    calls = []
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda *a: calls.append(a))
    for kwargs, name in (({"mmap_threshold": 64 << 20}, "mmap_threshold"), ({"trim_threshold": -1}, "trim_threshold"),
                         ({"top_pad": 1.5}, "top_pad"), ({"top_pad": True}, "top_pad"),
                         ({"trim_threshold": 1 << 40}, "trim_threshold")):
        with pytest.raises(ValueError, match=rf"{name}=.*allowed"):
            malloc.keep_freed_memory(**kwargs)
    assert calls == []  # the C library was never reached


def test_other_c_libraries_are_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "is_glibc", lambda: False)
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda *a: calls.append(a))
    assert malloc.keep_freed_memory() is False
    assert calls == []

"""The deep memory's chunk scan as compiled C++ loops (`csrc/chunk_scan.cpp`): the forward walk over a call's chunks
and the backward walk back over them, each one call, with no ATen op inside the walk.

`titans.memory.chunk_fused.ChunkScan` is the autograd op; on a small memory each of its ~25 forward and ~60 backward
ops per chunk costs ~5-10 µs of dispatch for ~1 µs of work. Here the same arithmetic runs as plain loops over raw
pointers — the small matmuls register-blocked, the elementwise steps and reductions fused into loops beside them —
compiled with `torch.utils.cpp_extension.load` at first use (g++ and ninja; ~30 s once, then cached under
`TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`). `ChunkScan` calls it where `supported` says so
(`NATIVE` on, SiLU between layers, depth ≥ 2, float32/float64 on the CPU, state at most `MAX_STATE` elements per
head, the eager loop rather than `compile_scan`'s); everything else, or a failed build (one warning naming why),
keeps the Python loop. The buffers the forward keeps for the backward (every chunk-start state) and the state-sized
outputs come from a pool in the extension that keeps freed blocks up to the peak its blocks held live
(`trim_pool` frees them). Tests: `tests/memory/test_chunk_native.py` holds reads, state and every gradient to the Python
op in float64.
"""

from __future__ import annotations

import hashlib
import platform
import warnings
from pathlib import Path

import torch
from torch import Tensor

# the native scan where `supported`; False = the Python loop of `titans.memory.chunk_fused` everywhere
NATIVE = True

# largest state per (sample, head) and layer, in elements, that the native loops take (i·o of the biggest layer). The
# forward keeps each chunk's state in the pooled buffers the backward reads and updates a large state in row tiles
# (see the C++ file), so the native scan beats the Python loop with MKL's matmuls at every size measured
# (docs/performance.md, one thread, the memory's forward + backward, native / Python loop, this work's versions):
# 32 x 128 ~1.7x, 128 x 512 1.56x, 256 x 1024 (Qwen3-0.6B's MAG) 1.76x. The limit is Qwen3-1.7B's 512 x 2048, not a
# measured crossover: beyond it, untried
MAX_STATE = 512 * 2048

# above this many state elements per layer and head, with chunks of at most UNTRANSPOSED_MAX_CHUNK tokens, the walks
# compute δ W_lᵀ and gz W_lᵀ as (W_l δᵀ)ᵀ, (W_l gzᵀ)ᵀ (two small transposes) instead of transposing W_l once a chunk
# (and keeping W_lᵀ for the backward): the transpose is a state-sized pass per chunk against products of chunk-size
# rows. Measured (the scan alone, forward / backward ms, untransposed vs transposed): 256 x 1024, chunk 16: 59 / 95 vs
# 68 / 120; 128 x 512, chunk 16: 46 / 71 vs 51 / 75; with chunks of 64 the transposed form is as fast or faster
# (256 x 1024: 69 / 141 vs 71 / 138; 128 x 512: 135 / 272 vs 138 / 246; 64 x 256: 39 / 75 vs 38 / 72)
SMALL_STATE = 64 * 256
UNTRANSPOSED_MAX_CHUNK = 16

_SOURCE = Path(__file__).parent / "csrc" / "chunk_scan.cpp"
_FLAGS = ["-O3", "-march=native", "-std=c++17"]
_LOADED: list = []  # [True] once built and loaded, [False] once it failed (warned)


def _extension_name() -> str:
    """The build's name: keyed by the CPU's instruction-set flags too, since it is compiled with -march=native and a
    cache directory shared between machines must not hand one CPU's build to another."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    key = hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]
    return f"titans_chunk_scan_{key}"


def available() -> bool:
    """Builds (first call of the process; cached on disk) and loads the extension; False, with one warning naming
    why, when it cannot be built — `ChunkScan` then keeps its Python loop."""
    if not _LOADED:
        try:
            from torch.utils import cpp_extension

            cpp_extension.load(name=_extension_name(), sources=[str(_SOURCE)], extra_cflags=_FLAGS,
                               is_python_module=False, verbose=False)
            _LOADED.append(True)
        except Exception as err:  # no compiler, no ninja, a compile error: the Python loop still works
            _LOADED.append(False)
            warnings.warn(f"titans.memory.chunk_native: the C++ chunk scan could not be built ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); the deep memory's chunk "
                          "scan runs its Python loop (titans.memory.chunk_fused)", RuntimeWarning, stacklevel=2)
    return _LOADED[0]


def supported(activation: str, depth: int, tensors: list[Tensor], state: list[Tensor]) -> bool:
    """Whether the native scan takes this call: `NATIVE` on, SiLU, depth ≥ 2, every tensor float32 or float64 of
    one dtype on the CPU, each layer's state at most `MAX_STATE` elements per head, and the extension built."""
    if not (NATIVE and activation == "silu" and depth >= 2):
        return False
    dtype = state[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t is not None and (t.dtype != dtype or t.device.type != "cpu") for t in (*tensors, *state)):
        return False
    if max(w.shape[-2] * w.shape[-1] for w in state) > MAX_STATE:
        return False
    return available()


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def scan_forward(x: Tensor, v: Tensor, coef: Tensor, weight: Tensor | None, limit: Tensor | None, decay: Tensor,
                 carry_m: Tensor | None, carry_s: Tensor | None, weights: list[Tensor], moms: list[Tensor],
                 keep: bool) -> tuple:
    """The forward walk (`chunk_fused._scan_forward` over all chunks). Arguments as `ChunkScan`'s. Returns reads,
    errors `[g, k, C, d]`, scale `[g, k]`, surprise² `[g, k, C]`, κ `[g, k, C]` and total `[g, k]` (the cap's, empty
    without it), the weights and momenta after the last chunk, and what `scan_backward` needs (with keep; else [])."""
    depth = len(weights)
    out = torch.ops.titans_chunk_scan.scan_forward(
        x.contiguous(), v.contiguous(), coef.contiguous(), _c(weight), _c(limit), decay.contiguous(), _c(carry_m),
        _c(carry_s), [w.contiguous() for w in weights], [m.contiguous() for m in moms], keep,
        x.shape[2] // 2 <= UNTRANSPOSED_MAX_CHUNK and max(w.shape[-2] * w.shape[-1] for w in weights) > SMALL_STATE)
    reads, errors, scale, surprise_sq, kappa, total = out[:6]
    new_w, new_m, saved = out[6:6 + depth], out[6 + depth:6 + 2 * depth], out[6 + 2 * depth:]
    return reads, errors, scale, surprise_sq, kappa, total, new_w, new_m, saved


def scan_backward(x: Tensor, coef: Tensor, scale: Tensor, decay: Tensor, carry_m: Tensor | None,
                  carry_s: Tensor | None, errors: Tensor, saved: list[Tensor], g_reads: Tensor, g_errors: Tensor,
                  g_w: list[Tensor], g_m: list[Tensor]) -> tuple:
    """The backward walk (`chunk_fused._scan_backward` over all chunks, in reverse). g_reads, g_errors
    `[g, k, C, d]`; g_w, g_m: d/d(state after the last chunk), not modified. Returns d/dx `[g, k, 2C, d]`, d/dv
    (= −d/d errors) `[g, k, C, d]`, d/d(capped coef) `[g, k, C, 2]`, d/d decay, carry_m, carry_s `[g, k]` (None
    without momentum) and d/d(state before the first chunk)."""
    depth = len(g_w)
    out = torch.ops.titans_chunk_scan.scan_backward(
        x, coef, scale, decay, carry_m, carry_s, errors, saved, g_reads.contiguous(), g_errors.contiguous(),
        [t.contiguous() for t in g_w], [t.contiguous() for t in g_m])
    g_x, g_v, g_coef, g_decay, g_cm, g_cs = out[:6]
    if carry_m is None:
        g_cm = g_cs = None
    return g_x, g_v, g_coef, g_decay, g_cm, g_cs, out[6:6 + depth], out[6 + depth:]


def trim_pool() -> int:
    """Frees the blocks the native forward keeps pooled for reuse (the chunk-start states a backward reads: a training
    step's worth, up to the peak its calls held at once) and returns the bytes freed; 0 when the extension is not
    loaded. For a process that stops training and wants the memory back; the next training call pools again."""
    if not (_LOADED and _LOADED[0]):
        return 0
    return int(torch.ops.titans_chunk_scan.pool_trim())

"""The deep memory's chunk scan as one autograd op with a hand-written backward (the training fast path).

`titans.memory.chunk.chunk_scan` runs the chunk loop in plain torch ops, so autograd records ~40 nodes per
chunk and replays them one by one: on a small memory the step is per-op overhead, not matmuls. Here the
same loop runs once without recording (`ChunkScan.forward`), and `ChunkScan.backward` walks the chunks in
reverse with the derivative written out — per chunk and layer a few batched matmuls, no graph. Same results
as `chunk_scan` (the forward is the same arithmetic; tests hold both to the float64
`titans.memory.reference` and this backward to autograd's through `chunk_scan`).

Per chunk (weights W_l, momentum S_l at the chunk start; X = [queries | keys] of the chunk; act = the MLP's
activation; k rows = the keys' rows):
    forward    h_0 = X, z_l = h_l W_l, h_{l+1} = act(z_l), out = z_{L-1}; reads = out[q rows]
               e = out[k rows] − v, δ_{L-1} = 2e, p_l = δ_{l+1} W_{l+1}ᵀ, δ_l = p_l ⊙ act'(z_l[k rows])
    cap        κ_j = Σ_l ‖h_l,j‖²‖δ_l,j‖² / ‖δ_{L-1},j‖², scale = min(1, limit / Σ_j (u_j + s_j·later)·κ_j)
    update     W_l' = A·W_l + c_S·S_l − h_lᵀ(û ⊙ δ_l),  S_l' = E·S_l − h_lᵀ(ŝ ⊙ δ_l),  û = u·scale, ŝ = s·scale
The backward differentiates all of it, including through δ (second-order terms: act''), except κ, which is a
normaliser without gradient as in `titans.memory.chunk.curvature`.

Layout: `_chunk_forward` / `_chunk_backward` are one chunk's arithmetic, `_scan_forward` / `_scan_backward` loop them
over a run of chunks, `ChunkScan` is the autograd op around the loops. Where `titans.memory.chunk_native.supported`
(SiLU, depth ≥ 2, float32/64 on the CPU, a small state; the default) the two loops run as C++ instead, each walk one
call with no ATen op inside (`csrc/chunk_scan.cpp`; these Python loops are its reference). With
`MemoryConfig.compile_scan` the two loops run under torch.compile (inductor) in blocks of `COMPILE_BLOCK` chunks: each
block one generated C++ function with the matmuls as library calls, instead of ~25 (forward) and ~60 (backward)
dispatched ops per chunk.

einops glossary: g = (batch head) groups, k = chunks, c = chunk tokens, d = head_dim, i/o = layer in/out.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from titans.memory import chunk_native
from titans.memory.mlp import _act, _act_grad, _act_grad2


def _mlp_forward(weights: list[Tensor], x: Tensor, activation: str, rows: slice | None = None,
                 ) -> tuple[Tensor, list[Tensor], list[tuple[Tensor, Tensor | None, Tensor | None]]]:
    """out, layer inputs h_l and (z_l, act'(z_l) on `rows` or None, σ(z_l) for SiLU else None) of the hidden layers
    of the MLP on x `[g, n, d]`.

    act' only where the forward needs it (the keys' rows, for δ): a forward without backward skips the rest. For SiLU
    one sigmoid serves act = z·σ, act' = σ + act·(1 − σ) here and act', act'' of the backward (`_act_grad_at`)."""
    hs, grads = [], []
    h = x
    for layer, w in enumerate(weights):
        hs.append(h)
        z = torch.bmm(h, w)  # (g, n, o)
        if layer < len(weights) - 1:
            if activation == "silu":
                sig = torch.sigmoid(z)
                h = z * sig
                grad = None if rows is None else torch.addcmul(sig[:, rows], h[:, rows], 1 - sig[:, rows])
                grads.append((z, grad, sig))
            else:
                grads.append((z, None if rows is None else _act_grad(activation, z[:, rows]), None))
                h = _act(activation, z)
        else:
            h = z
    return h, hs, grads


def _act_grad_at(activation: str, z: Tensor, h: Tensor, sig: Tensor | None, rows: slice) -> Tensor:
    """act'(z) on `rows`, from the forward's σ(z) and act(z) = h when it kept them (SiLU: σ + h·(1 − σ))."""
    if sig is None:
        return _act_grad(activation, z[:, rows])
    s = sig[:, rows]
    return torch.addcmul(s, h[:, rows], 1 - s)


def _act_grad2_at(activation: str, z: Tensor, sig: Tensor | None, rows: slice) -> Tensor:
    """act''(z) on `rows`, from the forward's σ(z) when it kept it (SiLU: σ(1 − σ)(2 + z(1 − 2σ)))."""
    if sig is None:
        return _act_grad2(activation, z[:, rows])
    s, zr = sig[:, rows], z[:, rows]
    one_minus = 1 - s
    return (s * one_minus) * (zr * (one_minus - s) + 2)


def _mlp_backward(weights: list[Tensor], hs: list[Tensor], grads: list, g_out: Tensor, g_w: list[Tensor],
                  activation: str, extra_h: list[Tensor | None] | None = None,
                  extra_z: list[Tensor | None] | None = None, rows: slice | None = None,
                  functional: bool = False) -> Tensor:
    """Backward of `_mlp_forward`: adds d/dW_l into g_w (in place) and returns d/dx.

    extra_h[l] / extra_z[l]: gradients that other uses of h_l / z_l (the chunk update) add on `rows`. functional:
    no `out=` writes into slices (the compiled chunk body; `rows` then ends the tensor)."""
    gz = g_out
    for layer in range(len(weights) - 1, -1, -1):
        g_w[layer].baddbmm_(hs[layer].transpose(1, 2), gz)  # Σ_t h_tᵀ gz_t
        gh = torch.bmm(gz, weights[layer].transpose(1, 2))  # (g, n, i)
        if extra_h is not None and extra_h[layer] is not None:
            gh[:, rows].add_(extra_h[layer])
        if layer == 0:
            return gh
        z, act_grad, sig = grads[layer - 1]
        if act_grad is None:
            gz = gh * _act_grad_at(activation, z, hs[layer], sig, slice(None))
        elif functional:  # act' of `rows` came from the forward; the other rows' now
            other = slice(0, rows.start)
            gz = torch.cat([gh[:, other] * _act_grad_at(activation, z, hs[layer], sig, other), gh[:, rows] * act_grad],
                           dim=1)
        else:
            gz = torch.empty_like(gh)
            torch.mul(gh[:, rows], act_grad, out=gz[:, rows])
            other = slice(0, rows.start)
            torch.mul(gh[:, other], _act_grad_at(activation, z, hs[layer], sig, other), out=gz[:, other])
        if extra_z is not None and extra_z[layer - 1] is not None:
            gz[:, rows].add_(extra_z[layer - 1])
    raise AssertionError("unreachable")


def _dots(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """Σ_l ⟨a_l, b_l⟩ per group: `[g]` from lists of `[g, i, o]` (mul + sum: fewer dispatches than a flat vecdot)."""
    total = None
    for x, y in zip(a, b):
        dot = (x * y).sum((1, 2))
        total = dot if total is None else total + dot
    return total


def _sqnorm(t: Tensor) -> Tensor:
    """‖t‖² over the last dim, one op."""
    return torch.linalg.vecdot(t, t)


def _chunk_forward(activation: str, depth: int, momentum: bool, capped: bool, x_c: Tensor, v_c: Tensor,
                   coef_c: Tensor, weight_c: Tensor | None, limit_c: Tensor | None, decay_c: Tensor,
                   cm_c: Tensor | None, cs_c: Tensor | None, ksq_c: Tensor, weights: list[Tensor], moms: list[Tensor],
                   err_out: Tensor | None = None, sums_buf: list[Tensor] | None = None) -> tuple:
    """One chunk of `ChunkScan.forward`: a plain tensor function (no autograd inside; `MemoryConfig.compile_scan`
    compiles `_scan_forward`'s loop of it).

    err_out / sums_buf: buffers the eager loop writes into (the chunk's slice of the errors; one weighted-sums buffer
    per layer, with momentum); None (the compiled body) allocates. Returns read `[g, C, d]`, error `[g, C, d]`,
    scale `[g]` or None, surprise² `[g, C]`, the new weights and momenta, and what the backward keeps: (hs, grads,
    (δ_l, rhs_l) per layer, p_l, coef_c `[g, C, 2, 1]`, κ, total)."""
    g, two_c, _ = x_c.shape
    C = two_c // 2
    out, hs, grads = _mlp_forward(weights, x_c, activation, slice(C, None))  # (g, 2C, d)
    read = out[:, :C]
    err = out[:, C:] - v_c if err_out is None else torch.sub(out[:, C:], v_c, out=err_out)  # M(k) − v
    deltas = [None] * depth
    ps = [None] * depth
    delta = 2.0 * err  # dℓ/dM(k) of Eq. 12
    for layer in range(depth - 1, -1, -1):
        deltas[layer] = delta
        if layer:
            ps[layer - 1] = torch.bmm(delta, weights[layer].transpose(1, 2))
            delta = ps[layer - 1] * grads[layer - 1][1]
    hk = [h[:, C:] for h in hs]  # the keys' rows of every layer input
    d_sq = [_sqnorm(dl) for dl in deltas]
    sq = ksq_c * d_sq[0]  # ‖∇ℓ_t‖² = Σ_l ‖h_l‖²‖δ_l‖²
    for layer in range(1, depth):
        sq = torch.addcmul(sq, _sqnorm(hk[layer]), d_sq[layer])
    kappa = total = scale = None
    if capped:  # titans.memory.chunk.cap_steps: scale = min(1, limit / Σ_j (u_j + s_j·later)·κ_j)
        kappa = sq / d_sq[-1].clamp_min(1e-30)
        total = torch.linalg.vecdot(weight_c, kappa)  # (g,)
        scale = (limit_c / total.clamp_min(1e-12)).clamp(max=1.0)
        coef_c = coef_c * scale.view(g, 1, 1)
    coef_c = coef_c.unsqueeze(-1)  # (g, C, 2, 1)
    new_w, new_m = [], []
    for layer in range(depth):
        o = weights[layer].shape[-1]
        rhs = (deltas[layer].unsqueeze(-2) * coef_c).flatten(-2)  # (g, C, 2o): −û δ | −ŝ δ
        # with momentum both halves of the sums are read once below, so one buffer per layer serves every chunk (no
        # state-sized allocation per chunk); without, the momentum is a view of them and keeps them
        if sums_buf is None:
            sums = torch.bmm(hk[layer].transpose(1, 2), rhs)  # (g, i, 2o)
        else:
            sums = torch.bmm(hk[layer].transpose(1, 2), rhs, out=sums_buf[layer])
        w_next = torch.addcmul(sums[..., :o], decay_c, weights[layer])  # A·M_0 − Σ û ∇ℓ
        m_next = sums[..., o:]
        if momentum:
            w_next.addcmul_(cm_c, moms[layer])  # + c_S·S_0
            m_next = torch.addcmul(m_next, cs_c, moms[layer])  # E·S_0 − Σ ŝ ∇ℓ
        new_w.append(w_next)
        new_m.append(m_next)
        deltas[layer] = (deltas[layer], rhs)
    return read, err, scale, sq, new_w, new_m, (hs, grads, deltas, ps, coef_c, kappa, total)


def _chunk_backward(activation: str, depth: int, momentum: bool, weights: list[Tensor], moms: list[Tensor],
                    hs: list[Tensor], grads: list, deltas: list, ps: list, coef_c: Tensor, g_w: list[Tensor],
                    g_m: list[Tensor], g_reads_c: Tensor, g_errors_c: Tensor, decay_c: Tensor, cm: Tensor | None,
                    cs: Tensor | None, functional: bool = False) -> tuple:
    """One chunk of `ChunkScan.backward` (walked in reverse): from d/d(weights, momenta after the chunk) `g_w`, `g_m`
    to those before it, plus the chunk's input gradients. A plain tensor function (`MemoryConfig.compile_scan`
    compiles `_scan_backward`'s loop of it).

    Eager (`functional=False`) it updates g_w and g_m in place: no state-sized allocation per chunk and layer; the
    compiled body works on copies (inductor turns them into its own buffers). Returns d/dx `[g, 2C, d]`, d/d error
    `[g, C, d]` (−d/dv), d/d(capped coef) `[g, C, 2]`, d/d decay, carry_m, carry_s `[g]` (None without momentum) and
    the new g_w, g_m."""
    if functional:
        g_w, g_m = [t.clone() for t in g_w], [t.clone() for t in g_m]
    C = hs[0].shape[1] // 2
    deltas, rhs = zip(*deltas)
    hk = [h[:, C:] for h in hs]
    # the update: W' = A·W + c_S·S + h_kᵀ(−û δ), S' = E·S + h_kᵀ(−ŝ δ)
    g_delta, g_hk = [], []
    g_coef_c = None
    for layer in range(depth):
        o = weights[layer].shape[-1]
        # two matmuls per state (weights, momentum) rather than one on their concatenation: no copy of the
        # state-sized gradients per chunk (at Qwen3-0.6B's shapes 16 MB per chunk, the step is bandwidth-bound)
        g_rhs = torch.stack([torch.bmm(hk[layer], g_w[layer]), torch.bmm(hk[layer], g_m[layer])], dim=2)
        g_hk.append(torch.baddbmm(torch.bmm(rhs[layer][..., :o], g_w[layer].transpose(1, 2)),
                                  rhs[layer][..., o:], g_m[layer].transpose(1, 2)))  # (g, C, i)
        g_delta.append(torch.linalg.vecdot(g_rhs, coef_c, dim=-2))  # (g, C, o); coef_c (g, C, 2, 1)
        gc = torch.linalg.vecdot(g_rhs, deltas[layer].unsqueeze(-2))  # (g, C, 2)
        g_coef_c = gc if g_coef_c is None else g_coef_c + gc
    g_decay = _dots(g_w, weights)
    g_carry_m = g_carry_s = None
    if momentum:
        g_carry_m = _dots(g_w, moms)
        g_carry_s = _dots(g_m, moms)
        # in place (g_w, g_m are this walk's own tensors): no state-sized allocation per chunk and layer, which at
        # Qwen3-0.6B's shapes (1 MB a tensor) costs fresh pages every time
        for gw, gm in zip(g_w, g_m):
            gm.mul_(cs).addcmul_(gw, cm)  # d/dS = c_S·gW' + E·gS'
    else:
        for gm in g_m:
            gm.zero_()  # S does not carry without momentum
    for gw in g_w:
        gw.mul_(decay_c)  # d/dW = A·gW' (+ the matmuls below)
    # δ_l = p_l ⊙ act'(z_l), p_l = δ_{l+1} W_{l+1}ᵀ: forward through the layers (δ_0 first)
    g_z_extra = [None] * depth
    for layer in range(depth - 1):
        z, act_grad, sig = grads[layer]
        m = g_delta[layer] * act_grad
        g_delta[layer + 1] = g_delta[layer + 1].baddbmm(m, weights[layer + 1])
        g_w[layer + 1].baddbmm_(m.transpose(1, 2), deltas[layer + 1])
        g_z_extra[layer] = g_delta[layer] * ps[layer] * _act_grad2_at(activation, z, sig, slice(C, None))
    g_err = torch.add(g_errors_c, g_delta[-1], alpha=2.0)  # e = out − v, δ_{L−1} = 2e
    g_out = torch.cat([g_reads_c, g_err], dim=1)  # (g, 2C, d)
    g_x = _mlp_backward(weights, hs, grads, g_out, g_w, activation, g_hk, g_z_extra, slice(C, None), functional)
    return g_x, g_err, g_coef_c, g_decay, g_carry_m, g_carry_s, g_w, g_m


# chunks per compiled call of `MemoryConfig.compile_scan`: the loops below unrolled over a block of this many chunks
# (one graph each for the forward and the backward; a call's last, shorter block compiles its own)
COMPILE_BLOCK = 8


def _scan_forward(activation: str, depth: int, momentum: bool, capped: bool, x: Tensor, v: Tensor, coef: Tensor,
                  weight: Tensor | None, limit: Tensor | None, decay: Tensor, carry_m: Tensor | None,
                  carry_s: Tensor | None, key_sq: Tensor, weights: list[Tensor], moms: list[Tensor], keep: bool,
                  errors: Tensor | None = None, sums_buf: list[Tensor] | None = None) -> tuple:
    """`_chunk_forward` over the chunks of x `[g, b, 2C, d]` (a call's chunks, or a block of them under
    `compile_scan`). Returns per-chunk lists (reads, errors (empty when written into `errors`), scales (capped),
    surprise², what the backward keeps (with `keep`)) and the weights and momenta after the last chunk."""
    nk = x.shape[1]
    # per-chunk views; the carries as [g, 1, 1] so the loop broadcasts them without reshaping
    carries = [None if t is None else t[:, :, None, None] for t in (decay, carry_m, carry_s)]
    per_chunk = [t.unbind(1) if t is not None else [None] * nk
                 for t in (x, v, coef, weight, limit, *carries, key_sq)]
    reads, errs, scales, surprise_sq, saved = [], [], [], [], []
    for ci, chunk in enumerate(zip(*per_chunk)):
        bufs = {} if errors is None else dict(err_out=errors[:, ci], sums_buf=sums_buf)
        read, err, scale, sq, new_w, new_m, kept = _chunk_forward(activation, depth, momentum, capped, *chunk,
                                                                  weights, moms, **bufs)
        reads.append(read)
        if errors is None:
            errs.append(err)
        surprise_sq.append(sq)
        if capped:
            scales.append(scale)
        if keep:  # without a backward each chunk's intermediates are freed as the loop goes
            saved.append((weights, moms, *kept))
        weights, moms = new_w, new_m
    return reads, errs, scales, surprise_sq, saved, weights, moms


def _scan_backward(activation: str, depth: int, momentum: bool, saved: list, g_w: list[Tensor], g_m: list[Tensor],
                   g_reads: Tensor, g_errors: Tensor, decay: Tensor, carry_m: Tensor | None, carry_s: Tensor | None,
                   functional: bool = False) -> tuple:
    """`_chunk_backward` over a block of chunks in reverse (saved: the forward's per-chunk tuples in forward order;
    g_reads, g_errors `[g, b, C, d]`, decay, carry_* `[g, b]`). Returns per-chunk lists in reverse order (d/dx,
    d/d error, d/d capped coef, d/d decay, carry_m, carry_s) and g_w, g_m before the block."""
    nk = len(saved)
    decay_c = decay[:, :, None, None].unbind(1)  # [g, 1, 1] per chunk
    cm_all = carry_m[:, :, None, None].unbind(1) if momentum else [None] * nk
    cs_all = carry_s[:, :, None, None].unbind(1) if momentum else [None] * nk
    out = [[] for _ in range(6)]
    for ci in range(nk - 1, -1, -1):
        weights, moms, hs, grads, deltas, ps, coef_c, _kappa, _total = saved[ci]
        *per_chunk, g_w, g_m = _chunk_backward(activation, depth, momentum, weights, moms, hs, grads, deltas, ps,
                                               coef_c, g_w, g_m, g_reads[:, ci], g_errors[:, ci], decay_c[ci],
                                               cm_all[ci], cs_all[ci], functional)
        for lst, t in zip(out, per_chunk):
            lst.append(t)
    return (*out, g_w, g_m)


COMPILE_BACKEND = "inductor"  # torch.compile's backend for the blocks (the fast tests trace with "aot_eager")
_COMPILED: dict = {}  # backend -> (_scan_forward, _scan_backward) under torch.compile, made on first use


def _compiled_scans() -> tuple:
    """The block loops under torch.compile (inductor: C++ kernels around the matmuls; fixed shapes, so one graph per
    configuration, batch·heads, block length and dtype; no autograd inside — `ChunkScan` is their autograd op)."""
    if COMPILE_BACKEND not in _COMPILED:
        opts = dict(dynamic=False, fullgraph=True, backend=COMPILE_BACKEND)
        _COMPILED[COMPILE_BACKEND] = (torch.compile(_scan_forward, **opts),
                                      torch.compile(functools.partial(_scan_backward, functional=True), **opts))
    return _COMPILED[COMPILE_BACKEND]


def _blocks(nk: int, compiled: bool) -> list[slice]:
    """The chunk ranges of one loop call each: all chunks eager, blocks of `COMPILE_BLOCK` compiled."""
    step = COMPILE_BLOCK if compiled else max(nk, 1)
    return [slice(i, min(i + step, nk)) for i in range(0, nk, step)]


def _sl(t: Tensor | None, block: slice) -> Tensor | None:
    return None if t is None else t[:, block]


class ChunkScan(torch.autograd.Function):
    """Inputs: meta (activation, depth, momentum, cap on, compiled), x `[g, k, 2C, d]` (queries | keys of each written
    chunk), q_tail `[g, C, d]` or None (queries of an unfinished chunk, zero-padded), v `[g, k, C, d]`,
    coef `[g, k, C, 2]` (−u, −s: the step coefficients before the cap), weight `[g, k, C]` or None (the cap's
    u + s·later: Σ_j weight_j κ_j is the chunk's total step), limit `[g, k]` or None (no cap), decay `[g, k]`,
    carry_m, carry_s `[g, k]` or None (no momentum), then the L weights and the L momenta `[g, i, o]`.
    compiled: the chunk loops (`_scan_forward`, `_scan_backward`) run under torch.compile in blocks of
    `COMPILE_BLOCK` chunks, when a backward will follow (a forward without one stays eager: no compile for it).

    Outputs: reads `[g, k(+1), C, d]`, errors `[g, k, C, d]` (M(k) − v at the chunk start), scale `[g, k]`
    (the cap's factor on θ), surprise² `[g, k, C]` (Σ_l ‖h_l‖²‖δ_l‖², no gradient), then the L weights and the
    L momenta after the last chunk.
    """

    @staticmethod
    def forward(ctx, meta, x, q_tail, v, coef, weight, limit, decay, carry_m, carry_s, *state):
        activation, depth, momentum, capped, compiled = meta
        weights, moms = list(state[:depth]), list(state[depth:])
        g, nk, two_c, d = x.shape
        C = two_c // 2
        keep = any(ctx.needs_input_grad)
        compiled = compiled and keep
        native = not compiled and chunk_native.supported(activation, depth, [x, q_tail, v, coef, weight, limit, decay,
                                                                             carry_m, carry_s], [*weights, *moms])
        ctx.cap = ctx.native = None
        if native:  # the same loops in C++ (titans.memory.chunk_native), each walk one call
            reads, errors, scale_all, surprise_sq, kappa, total, weights, moms, kept = chunk_native.scan_forward(
                x, v, coef, weight, limit, decay, carry_m, carry_s, weights, moms, keep)
            ctx.native, ctx.cap, saved = kept, (kappa, total), []
        else:
            key_sq = _sqnorm(x[:, :, C:])  # (g, k, c): ‖k_t‖², layer 0's input norm
            reads, errs, scales, surprise_sq, saved = [], [], [], [], []
            if compiled:
                scan, errors, sums_buf = _compiled_scans()[0], None, None
            else:
                scan, errors = _scan_forward, x.new_empty(g, nk, C, d)
                sums_buf = [w.new_empty(g, w.shape[1], 2 * w.shape[2]) for w in weights] if momentum else None
            for block in _blocks(nk, compiled):
                *lists, weights, moms = scan(
                    activation, depth, momentum, capped, *(_sl(t, block) for t in (x, v, coef, weight, limit, decay,
                                                                                    carry_m, carry_s, key_sq)),
                    weights, moms, keep, errors, sums_buf)
                for acc, part in zip((reads, errs, scales, surprise_sq, saved), lists):
                    acc.extend(part)
            reads = torch.stack(reads, dim=1)
            if errors is None:
                errors = torch.stack(errs, dim=1)
            scale_all = torch.stack(scales, dim=1) if capped else x.new_ones(g, nk)
            surprise_sq = torch.stack(surprise_sq, dim=1)
        tail = None
        if q_tail is not None:  # the unfinished chunk reads the last weights
            out, hs, grads = _mlp_forward(weights, q_tail, activation)
            reads = torch.cat([reads, out.unsqueeze(1)], dim=1)
            tail = (weights, hs, grads)
        ctx.mark_non_differentiable(surprise_sq)
        ctx.meta = (*meta[:4], compiled)
        ctx.saved = saved
        ctx.nk = nk
        ctx.tail = tail
        ctx.has_tail = q_tail is not None
        ctx.save_for_backward(coef, limit, decay, carry_m, carry_s, scale_all,
                              *((x, errors) if native else (None, None)))
        moms = [m.contiguous() for m in moms]
        return (reads, errors, scale_all, surprise_sq, *weights, *moms)

    @staticmethod
    def backward(ctx, *grads):
        # the forward ran in the state dtype with autocast off (NeuralMemory's scan); a backward called inside an
        # autocast region (loss.backward() under torch.autocast) must not drop to bf16
        with torch.autocast(device_type=grads[0].device.type, enabled=False):
            return ChunkScan._backward(ctx, *grads)

    @staticmethod
    def _backward(ctx, g_reads, g_errors, g_scale, _g_surprise, *g_state):
        activation, depth, momentum, capped, compiled = ctx.meta
        coef, limit, decay, carry_m, carry_s, scale_all, x, errors = ctx.saved_tensors
        # d/d(weights, momenta after the chunk being walked): this walk's own copies (the native walk copies them itself
        # unless an unfinished chunk's read adds into them first)
        own = ctx.native is None or ctx.has_tail
        g_w = [t.clone() if own else t for t in g_state[:depth]]
        g_m = [t.clone() if own else t for t in g_state[depth:]]
        nk = ctx.nk
        g_tail = None
        if ctx.has_tail:
            weights, hs, grads = ctx.tail
            g_tail = _mlp_backward(weights, hs, grads, g_reads[:, nk], g_w, activation)
        if ctx.native is not None:
            g_x, g_v, g_coef_hat, g_decay, g_carry_m, g_carry_s, g_w, g_m = chunk_native.scan_backward(
                x, coef, scale_all, decay, carry_m, carry_s, errors, ctx.native, g_reads[:, :nk], g_errors, g_w, g_m)
        else:
            lists = [[] for _ in range(6)]  # g_x, g_v, g_coef, g_decay, g_carry_m, g_carry_s, last chunk first
            scan = _compiled_scans()[1] if compiled else _scan_backward
            for block in reversed(_blocks(nk, compiled)):
                *parts, g_w, g_m = scan(activation, depth, momentum, ctx.saved[block], g_w, g_m,
                                        *(_sl(t, block) for t in (g_reads, g_errors, decay, carry_m, carry_s)))
                for acc, part in zip(lists, parts):
                    acc.extend(part)
            g_x, g_v, g_coef, g_decay, g_carry_m, g_carry_s = lists
            g_x = torch.stack(g_x[::-1], dim=1)
            g_v = -torch.stack(g_v[::-1], dim=1)
            g_coef_hat = torch.stack(g_coef[::-1], dim=1)  # (g, k, C, 2): d/d(capped coef)
            g_decay = torch.stack(g_decay[::-1], dim=1)
            if momentum:
                g_carry_m, g_carry_s = torch.stack(g_carry_m[::-1], dim=1), torch.stack(g_carry_s[::-1], dim=1)
            else:
                g_carry_m = g_carry_s = None
        # the cap, all chunks at once: coef_hat = coef·scale, scale = min(1, limit / max(total, 1e-12))
        g_coef = g_coef_hat * scale_all[..., None, None]
        g_weight = g_limit = None
        if capped:
            if ctx.cap is not None:
                kappa, total = ctx.cap  # (g, k, C), (g, k)
            else:
                kappa = torch.stack([s[7] for s in ctx.saved], dim=1)
                total = torch.stack([s[8] for s in ctx.saved], dim=1)
            g_scale_all = (g_coef_hat * coef).sum((-2, -1)) + g_scale
            clamped = total.clamp_min(1e-12)
            g_ratio = g_scale_all * (limit / clamped <= 1.0)  # clamp(max=1) passes where ratio ≤ 1
            g_limit = g_ratio / clamped
            g_total = (-g_ratio * limit / clamped.pow(2)) * (total >= 1e-12)
            g_weight = g_total.unsqueeze(-1) * kappa
        g_states = [*g_w, *g_m]
        return (None, g_x, g_tail, g_v, g_coef, g_weight, g_limit, g_decay, g_carry_m, g_carry_s, *g_states)

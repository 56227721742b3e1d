"""The memory's input and output sides as autograd ops with hand-written backwards (the training fast path).

`NeuralMemory._forward` turns its input into queries, keys and values in ~15 small ops (RMSNorm, the q/k/v
projection, the causal depthwise conv, SiLU, the head-major copy, the ℓ2 norms of q and k), and its reads into the
output in ~10 more (the per-head RMS norm, the token-major copy, the output gate, the output projection); autograd
records and replays each of them, and on a small memory (hidden 128) that bookkeeping costs more than the matmuls.
Here each side runs once without recording (`InputProjection`, `OutputProjection`) with its derivative written out.
Same arithmetic as the plain ops; `tests/memory/test_fused_io.py` holds outputs and every gradient to them
(`titans.memory.neural_memory.FUSED_IO = False`) and to finite differences.

Input side, per token t of xs `[B, N, dim]` (N = carried conv context + n tokens; K taps):
    r_t = (mean(xs_t²) + 1e-6)^−½, xn_t = xs_t·r_t·norm_w             RMSNorm (the gates read xn of the n tokens)
    a_t = xn_t W_qkvᵀ                                                  q | k | v projection, `[B, N, 3·inner]`
    c_t = conv_b + Σ_j conv_w[:, j]·a_{t+j}   (zeros pad the front)   causal depthwise conv, n outputs
    y_t = c_t·σ(c_t)                                                   SiLU
    q_t, k_t = y_t/‖y_t‖ per head (‖·‖² clamped at 1e-24), v_t = y_t   ℓ2 norms; head-major `[3, B, H, n, d]`
Output side, per token t and head h of the reads m `[B, H, t, d]` and the call's raw input x `[B, t, dim]`:
    m̂ = m·(mean(m²) + 1e-6)^−½·out_norm_h, o_t = [m̂_h]_h ⊙ σ(x_t W_gᵀ + b_g), y_t = o_t W_outᵀ

einops glossary: b = batch, n = tokens, s = (q, k, v), h = heads, d = head_dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

_RMS_EPS = 1e-6  # as NeuralMemory._input_rms_norm
_L2_FLOOR = 1e-24  # as the ℓ2 norm of NeuralMemory._forward (F.normalize's eps², squared)


class InputProjection(torch.autograd.Function):
    """Inputs: xs `[B, N, dim]` (raw tokens: carried conv context, buffered and new tokens), norm_w `[dim]`,
    w_qkv `[3·inner, dim]`, conv_w `[3·inner, K]`, conv_b `[3·inner]`, n_ctx (tokens of xs that are carried context,
    ≤ K − 1), heads.

    Outputs: qkv `[3, B, H, n, d]` (q and k ℓ2-normalised per head, v as is; n = N − n_ctx) and xn `[B, n, dim]`
    (the RMS-normed tokens, what the gates read). All in xs's dtype (the caller runs it outside autocast)."""

    @staticmethod
    def forward(ctx, xs, norm_w, w_qkv, conv_w, conv_b, n_ctx: int, heads: int):
        B, N, _ = xs.shape
        K = conv_w.shape[1]
        n = N - n_ctx
        three_inner = w_qkv.shape[0]
        d = three_inner // (3 * heads)
        r = torch.rsqrt(torch.linalg.vecdot(xs, xs).unsqueeze(-1) / xs.shape[-1] + _RMS_EPS)  # (b, N, 1)
        xn = xs * r * norm_w
        a = torch.nn.functional.linear(xn, w_qkv)  # (b, N, 3·inner)
        pad = K - 1 - n_ctx
        if pad:  # zeros stand in for the context a first call lacks
            a = torch.nn.functional.pad(a, (0, 0, pad, 0))  # (b, K−1+n, 3·inner)
        taps = conv_w.t().contiguous()  # (K, 3·inner): tap j multiplies token t+j of the padded input
        c = torch.addcmul(conv_b, a[:, :n], taps[0])
        for j in range(1, K):
            c.addcmul_(a[:, j : j + n], taps[j])
        sig = torch.sigmoid(c)
        y = c * sig  # (b, n, 3·inner)
        hm = y.view(B, n, 3, heads, d).permute(2, 0, 3, 1, 4).contiguous()  # (s, b, h, n, d)
        qk = hm[:2]
        rq = torch.rsqrt(torch.linalg.vecdot(qk, qk).unsqueeze(-1).clamp_min(_L2_FLOOR))  # (2, b, h, n, 1)
        qk.mul_(rq)  # in place: hm now holds the outputs
        ctx.save_for_backward(xs, norm_w, w_qkv, conv_w, r, xn, a, c, sig, y, hm, rq)
        ctx.n_ctx = n_ctx
        return hm, xn[:, n_ctx:]

    @staticmethod
    def backward(ctx, g_hm: Tensor, g_xn_out: Tensor):
        xs, norm_w, w_qkv, conv_w, r, xn, a, c, sig, y, hm, rq = ctx.saved_tensors
        n_ctx = ctx.n_ctx
        B, N, dim = xs.shape
        K = conv_w.shape[1]
        n = N - n_ctx
        need_x, need_norm, need_w, need_cw, need_cb = ctx.needs_input_grad[:5]
        # ℓ2 norm: q = y·ρ, ρ = ‖y‖⁻¹ (clamped) -> dy = ρ·(dq − q·⟨q, dq⟩) where the clamp does not bind
        qk, g_qk = hm[:2], g_hm[:2]
        along = torch.linalg.vecdot(qk, g_qk).unsqueeze(-1)  # (2, b, h, n, 1)
        if bool((rq >= _L2_FLOOR ** -0.5).any()):  # a clamped norm (a zero vector): no gradient through ρ there
            along = along * (rq < _L2_FLOOR ** -0.5)
        g_y_hm = torch.cat([(g_qk - qk * along) * rq, g_hm[2:]], dim=0)  # (s, b, h, n, d)
        g_y = g_y_hm.permute(1, 3, 0, 2, 4).reshape(B, n, -1)  # (b, n, 3·inner), token-major
        g_c = g_y * torch.addcmul(sig, y, 1 - sig)  # SiLU: σ + y·(1 − σ)
        taps = conv_w.t().contiguous()
        g_cw = g_cb = g_w = g_norm = g_x = None
        if need_cw:  # d/d conv_w[:, j] = Σ_{b,t} g_c[b, t]·a[b, t+j]
            g_cw = torch.stack([torch.linalg.vecdot(a[:, j : j + n], g_c, dim=1).sum(0) for j in range(K)], dim=-1)
        if need_cb:
            g_cb = g_c.sum((0, 1))
        pad = K - 1 - n_ctx
        g_a = g_c.new_zeros(B, K - 1 + n, g_c.shape[-1])
        for j in range(K):
            g_a[:, j : j + n].addcmul_(g_c, taps[j])
        g_a = g_a[:, pad:]  # (b, N, 3·inner): the padding's rows had no input
        if need_w:
            g_w = g_a.flatten(0, 1).t().mm(xn.flatten(0, 1))  # (3·inner, dim)
        if need_x or need_norm:
            g_xn = g_a.matmul(w_qkv)  # (b, N, dim)
            g_xn[:, n_ctx:].add_(g_xn_out)
            xr = xs * r  # the normed input before the gain
            if need_norm:
                g_norm = (g_xn * xr).sum((0, 1))
            if need_x:  # RMSNorm: dx = r·u − x·r³·mean(x·u), u = g_xn·norm_w
                u = g_xn * norm_w
                g_x = r * u - xr * (r * r * (torch.linalg.vecdot(xs, u).unsqueeze(-1) / dim))
        return g_x, g_norm, g_w, g_cw, g_cb, None, None


class OutputProjection(torch.autograd.Function):
    """Inputs: reads `[B, H, t, d]`, out_norm `[H, d]`, x `[B, t, dim]` (the call's raw input), w_gate `[inner, dim]`,
    b_gate `[inner]`, w_out `[dim, inner]`. Output: y `[B, t, dim]`. All in one dtype (the caller checks)."""

    @staticmethod
    def forward(ctx, reads, out_norm, x, w_gate, b_gate, w_out):
        B, H, t, d = reads.shape
        rr = torch.rsqrt(torch.linalg.vecdot(reads, reads).unsqueeze(-1) / d + _RMS_EPS)  # (b, h, t, 1)
        normed = reads * rr  # before the gain
        tm = (normed * out_norm[:, None, :]).transpose(1, 2).reshape(B, t, H * d)  # (b, t, inner), token-major
        sg = torch.sigmoid(torch.nn.functional.linear(x, w_gate, b_gate))  # (b, t, inner)
        o = tm * sg
        ctx.save_for_backward(reads, out_norm, x, w_gate, w_out, rr, normed, tm, sg, o)
        return torch.nn.functional.linear(o, w_out)

    @staticmethod
    def backward(ctx, g_y: Tensor):
        reads, out_norm, x, w_gate, w_out, rr, normed, tm, sg, o = ctx.saved_tensors
        B, H, t, d = reads.shape
        need_r, need_norm, need_x, need_wg, need_bg, need_wo = ctx.needs_input_grad
        g_flat = g_y.reshape(B * t, -1)
        g_wo = g_flat.t().mm(o.reshape(B * t, -1)) if need_wo else None  # (dim, inner)
        g_o = g_y.matmul(w_out)  # (b, t, inner)
        g_gl = g_o * tm * torch.addcmul(sg, sg, sg, value=-1)  # σ' = σ(1 − σ)
        g_wg = g_gl.reshape(B * t, -1).t().mm(x.reshape(B * t, -1)) if need_wg else None
        g_bg = g_gl.sum((0, 1)) if need_bg else None
        g_x = g_gl.matmul(w_gate) if need_x else None
        g_hm = (g_o * sg).view(B, t, H, d).transpose(1, 2)  # (b, h, t, d): d/d(normed · gain)
        g_norm = (g_hm * normed).sum((0, 2)) if need_norm else None
        g_r = None
        if need_r:  # RMSNorm over d: dm = rr·u − m̂·rr·mean(m̂·u), u = g·gain, m̂ = m·rr
            u = g_hm * out_norm[:, None, :]
            g_r = rr * (u - normed * (torch.linalg.vecdot(normed, u).unsqueeze(-1) / d))
        return g_r, g_norm, g_x, g_wg, g_bg, g_wo

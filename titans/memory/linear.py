"""The linear fast path (memory depth 1, no surprise clipping): each chunk is one affine map of (W, S).

With ∇ℓ_j = 2 k_j^T (k_j W − v_j) at the chunk-start W, the chunk update of Eq. 13-14 is affine in the
state, so the transitions of all chunks are built at once and the loop is one batched matmul-add per chunk.
Same results as `titans.memory.chunk.chunk_scan` (tests hold them together and to the float64
`titans.memory.reference`).

einops glossary: b = batch, h = heads, n/t = tokens, d = head_dim, g = (b h) groups, c = chunk tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from titans.memory.chunk import cap_steps, chunk_coefficients, pad_nan
from titans.memory.config import MemoryConfig


def linear_scan(
    config: MemoryConfig,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    log_eta: Tensor | None,
    log_keep: Tensor,
    weights: dict[str, Tensor],
    momentum: dict[str, Tensor],
    n_buf: int,
    with_aux: bool = True,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], Tensor | None, Tensor | None, Tensor | None]:
    """`titans.memory.chunk.chunk_scan` for a linear memory M(k) = k W, with the same results and far fewer ops.

    With ∇ℓ_j = 2 k_j^T (k_j W − v_j) at the chunk-start W, one chunk of Eq. 13-14 is affine in
    (W, S):   W' = (A·I − 2 Kᵀ diag(u) K) W + c_S·S + 2 Kᵀ diag(u) V
              S' = −2 Kᵀ diag(s) K W + E·S + 2 Kᵀ diag(s) V
    so every chunk's transition [W'; S'] = P [W; S] + R is built for all chunks at once, the loop
    is one batched matmul-add per chunk, and all reads are one matmul at the end. Without momentum
    the state is W alone. Surprise and θ used (aux) only `with_aux`, else None.
    """
    c = config
    (name,) = weights  # depth 1: one weight matrix
    B, H, n, d = q.shape
    C = c.chunk_size
    dtype = q.dtype
    w0 = rearrange(weights[name].to(dtype), "b h i o -> (b h) i o")
    s0 = rearrange(momentum[name].to(dtype), "b h i o -> (b h) i o")
    q, k, v = (rearrange(t, "b h n d -> (b h) n d") for t in (q, k, v))
    lr, log_keep = (rearrange(t, "b h n -> (b h) n") for t in (lr, log_keep))
    g = q.shape[0]
    nf = n // C  # complete chunks: written
    nr = -(-n // C)  # chunks with tokens: read (the last may be unfinished)
    momentum = log_eta is not None  # S carries from chunk to chunk

    x = torch.cat([w0, s0], dim=1) if momentum else w0  # (g, 2d | d, d)
    states = [x]  # the state before chunk 0, 1, ...
    lr_used = lr
    if nf:
        u, s_coef, decay, carry_m, carry_s, lr_c = chunk_coefficients(
            lr[:, : nf * C], None if log_eta is None else rearrange(log_eta, "b h n -> (b h) n")[:, : nf * C],
            log_keep[:, : nf * C],
            C,
        )
        if c.chunk_step_cap > 0:  # a linear memory's curvature along any error is ‖k_j‖² (1 for ℓ2-normed keys)
            curv = k[:, : nf * C].detach().pow(2).sum(-1).reshape(g, nf, C)
            u, s_coef, lr_c = cap_steps(u, s_coef, lr_c, decay, carry_m, carry_s, curv, c.chunk_step_cap)
        kc = k[:, : nf * C].reshape(g * nf, C, d)
        vc = v[:, : nf * C].reshape(g * nf, C, d)
        eye = torch.eye(d, device=q.device, dtype=dtype)
        ku_t = ((2 * u).reshape(g * nf, C, 1) * kc).transpose(1, 2)  # (g·nf, d, c): 2 Kᵀ diag(u)
        # A·I − 2 Kᵀ diag(u) K, in one op
        p_ww = torch.baddbmm(decay.reshape(g * nf, 1, 1) * eye, ku_t, kc, alpha=-1).view(g, nf, d, d)
        r_w = torch.bmm(ku_t, vc).view(g, nf, d, d)
        if momentum:
            ks_t = ((2 * s_coef).reshape(g * nf, C, 1) * kc).transpose(1, 2)
            top = torch.cat([p_ww, carry_m[..., None, None] * eye], dim=-1)  # (g, nf, d, 2d)
            bottom = torch.cat([-(ks_t @ kc).view(g, nf, d, d), carry_s[..., None, None] * eye], dim=-1)
            trans = torch.cat([top, bottom], dim=-2)  # (g, nf, 2d, 2d)
            offset = torch.cat([r_w, (ks_t @ vc).view(g, nf, d, d)], dim=-2)  # (g, nf, 2d, d)
        else:
            trans, offset = p_ww, r_w
        # unbind, not trans[:, ci]: each indexing op would allocate a zero gradient of the whole tensor
        for off_c, trans_c in zip(offset.unbind(1), trans.unbind(1)):
            x = torch.baddbmm(off_c, trans_c, x)
            states.append(x)
        if with_aux:
            lr_used = torch.cat([lr_c.reshape(g, -1), lr[:, nf * C :]], dim=1)

    # reads: chunk c with the weights after chunk c-1 (Eq. 15); the unfinished chunk with the last ones
    w_before = torch.stack(states[:nr], dim=1)[:, :, :d]  # (g, nr, d, d)
    pad = nr * C - n
    qc = (F.pad(q, (0, 0, 0, pad)) if pad else q).reshape(g, nr, C, d)
    retrieved = (qc @ w_before).reshape(g, nr * C, d)[:, n_buf:n]
    surprise = errors = None
    if with_aux:
        err = []  # per-token M(k_t) − v_t = k_t W − v_t at the chunk-start W, with its graph
        if nf:
            kc4 = k[:, : nf * C].reshape(g, nf, C, d)
            err = [(kc4 @ w_before[:, :nf] - v[:, : nf * C].reshape(g, nf, C, d)).reshape(g, nf * C, d)]
        errors = rearrange(pad_nan(err, q), "(b h) n d -> b h n d", b=B)
        with torch.no_grad():  # per-token surprise ‖∇ℓ_t‖ = 2 ‖k_t‖ ‖k_t W − v_t‖ (NaN while buffered)
            surprise = 2 * k.norm(dim=-1) * errors.detach().reshape(g, n, d).norm(dim=-1)
            surprise = rearrange(surprise, "(b h) n -> b h n", b=B)
        lr_used = rearrange(lr_used, "(b h) n -> b h n", b=B)
    else:
        lr_used = None
    w_last = x[:, :d]
    if momentum:
        s_last = x[:, d:]
    elif nf:
        # no momentum: S is the last chunk's −Σ s_j ∇ℓ_j, and s_j = 0 but for its last token, where
        # s_C = θ_C (capped) = u_C (β_C = 1): S = 2 u_C k_Cᵀ (v_C − k_C W) at the chunk-start W
        last = slice(nf * C - 1, nf * C)
        err = v[:, last] - k[:, last] @ w_before[:, nf - 1]  # (g, 1, d)
        s_last = (2 * u[:, -1, -1:, None] * k[:, last]).transpose(1, 2) @ err  # (g, d, d)
    else:
        s_last = s0
    return (
        rearrange(retrieved, "(b h) t d -> b h t d", b=B),
        {name: rearrange(w_last, "(b h) i o -> b h i o", b=B)},
        {name: rearrange(s_last, "(b h) i o -> b h i o", b=B)},
        surprise,
        errors,
        lr_used,
    )

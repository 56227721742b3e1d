"""The linear fast path (memory depth 1, no surprise clipping): the chunk update is affine in the state.

With ∇ℓ_j = 2 k_jᵀ (k_j W − v_j) at the chunk-start W, one chunk of Eq. 13-14 is affine in (W, S):
    W' = A·W − 2Kᵀdiag(u) E + c_S·S        S' = E_η·S − 2Kᵀdiag(s) E        E = K W − V (the chunk's errors)
so the loop over chunks needs no per-token gradients. Three forms, same results (tests hold them together,
to `titans.memory.chunk.chunk_scan` and to the float64 `titans.memory.reference`):
- without momentum, the block form: the errors of a block of chunks (~64 tokens) solve one unit lower-triangular
  system in the block-start W (the delta rule's chunkwise form, as in flash-linear-attention's DeltaNet, with
  blocks of chunks where DeltaNet has tokens), so the loop is one d×d matmul-add per block and every read and
  error is a batched matmul after it;
- with momentum, per chunk: the low-rank chain (2·c·d² multiply-adds per chunk) or the dense chain (every
  chunk's transition built at once, d³ per chunk), whichever has fewer multiply-adds (`lowrank_steps`).

einops glossary: b = batch, h = heads, n/t = tokens, d = head_dim, g = (b h) groups, c = chunk tokens,
k = chunks, l = block tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from titans.memory.chunk import cap_steps, chunk_coefficients, pad_nan
from titans.memory.config import MemoryConfig

BLOCK_TOKENS = 64  # tokens per block of the block form (rounded down to whole chunks, at least one)


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

    Reads: chunk c with the weights after chunk c−1 (Eq. 15), the unfinished chunk with the last ones.
    Surprise and θ used (aux) only `with_aux`, else None.
    """
    c = config
    (name,) = weights  # depth 1: one weight matrix
    B, H, n, d = q.shape
    C = c.chunk_size
    dtype = q.dtype
    w = rearrange(weights[name].to(dtype), "b h i o -> (b h) i o")
    s = rearrange(momentum[name].to(dtype), "b h i o -> (b h) i o")
    q, k, v = (rearrange(t, "b h n d -> (b h) n d") for t in (q, k, v))
    lr, log_keep = (rearrange(t, "b h n -> (b h) n") for t in (lr, log_keep))
    g = q.shape[0]
    nf = n // C  # complete chunks: written
    m = nf * C  # their tokens
    with_momentum = log_eta is not None  # S carries from chunk to chunk

    reads, err, lr_used = [], [], lr
    if nf:
        u, s_coef, decay, carry_m, carry_s, lr_c = chunk_coefficients(
            lr[:, :m], None if log_eta is None else rearrange(log_eta, "b h n -> (b h) n")[:, :m], log_keep[:, :m], C)
        if c.chunk_step_cap > 0:  # a linear memory's curvature along any error is ‖k_j‖² (1 for ℓ2-normed keys)
            curv = k[:, :m].detach().pow(2).sum(-1).reshape(g, nf, C)
            u, s_coef, lr_c = cap_steps(u, s_coef, lr_c, decay, carry_m, carry_s, curv, c.chunk_step_cap)
        if with_momentum:
            w, s, read, e = _chunk_chain(q[:, :m], k[:, :m], v[:, :m], u, s_coef, decay, carry_m, carry_s, w, s)
        else:
            log_decay = log_keep[:, :m].reshape(g, nf, C).sum(-1)  # log A per chunk
            w, read, e = _block_chain(q[:, :m], k[:, :m], v[:, :m], u, log_decay, w)
            # no momentum: S is the last chunk's −Σ s_j ∇ℓ_j, and s_j = 0 but for its last token, where
            # s_C = θ_C (capped) = u_C (β_C = 1): S = −2 u_C k_Cᵀ e_C at the chunk-start W
            s = -(2 * u[:, -1, -1:, None] * k[:, m - 1 : m]).transpose(1, 2) @ e[:, m - 1 : m]
        reads.append(read)
        err.append(e)
        if with_aux:
            lr_used = torch.cat([lr_c.reshape(g, -1), lr[:, m:]], dim=1)
    if m < n:  # the unfinished chunk reads with the last weights
        reads.append(q[:, m:] @ w)
    retrieved = torch.cat(reads, dim=1)[:, n_buf:]
    surprise = errors = None
    if with_aux:  # errors: per-token M(k_t) − v_t = k_t W − v_t at the chunk-start W, with its graph
        errors = rearrange(pad_nan(err, q), "(b h) n d -> b h n d", b=B)
        with torch.no_grad():  # per-token surprise ‖∇ℓ_t‖ = 2 ‖k_t‖ ‖k_t W − v_t‖ (NaN while buffered)
            surprise = 2 * k.norm(dim=-1) * errors.detach().reshape(g, n, d).norm(dim=-1)
            surprise = rearrange(surprise, "(b h) n -> b h n", b=B)
        lr_used = rearrange(lr_used, "(b h) n -> b h n", b=B)
    else:
        lr_used = None
    return (
        rearrange(retrieved, "(b h) t d -> b h t d", b=B),
        {name: rearrange(w, "(b h) i o -> b h i o", b=B)},
        {name: rearrange(s, "(b h) i o -> b h i o", b=B)},
        surprise,
        errors,
        lr_used,
    )


def lowrank_steps(chunk_size: int, head_dim: int) -> bool:
    """Whether the low-rank chunk chain (2·c·d² multiply-adds per chunk) beats the dense one (d³): 2c < d."""
    return 2 * chunk_size < head_dim


def _block_chain(q: Tensor, k: Tensor, v: Tensor, u: Tensor, log_decay: Tensor, w: Tensor):
    """Without momentum: W through every complete chunk, a block of chunks per step. Returns (W after them,
    reads `[g, m, d]`, errors `[g, m, d]`).

    In a block that starts at W_0, with γ_c = Π_{c'<c} A_{c'} and U = diag(2u) (the capped steps):
        W_c = γ_c W_0 − Σ_{c'<c} (γ_c/γ_{c'+1}) K_{c'}ᵀ U_{c'} E_{c'},   E_c = K_c W_c − V_c,
    so the errors of the whole block solve (I + M) E = diag(γ) K W_0 − V with M strictly block-lower-triangular,
    M_ij = (γ_c(i)/γ_c(j)+1) 2u_j k_i·k_j for c(j) < c(i). That solve depends on keys and gates only: E = X_K W_0 − X_V
    for all blocks at once, the block's end W_G = (γ_G I − K̃ᵀX_K) W_0 + K̃ᵀX_V (K̃_j = (γ_G/γ_c(j)+1) 2u_j k_j), and
    the reads R = diag(γ) Q W_0 − P E with P as M but q_i·k_j.
    """
    g, m, d = k.shape
    nf = log_decay.shape[1]
    C = m // nf
    G = max(1, BLOCK_TOKENS // C)  # chunks per block
    nb = -(-nf // G)
    pad = nb * G - nf  # identity chunks (k = v = q = 0, u = 0, A = 1) complete the last block
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad * C)) for t in (q, k, v))
        u = F.pad(u, (0, 0, 0, pad))
        log_decay = F.pad(log_decay, (0, pad))
    L = G * C
    qb, kb, vb = (t.reshape(g, nb, L, d) for t in (q, k, v))
    u2 = (2 * u).reshape(g, nb, L)
    ld = log_decay.reshape(g, nb, G)
    lam_next = torch.cumsum(ld, dim=-1)  # log γ_{c+1}
    lam = lam_next - ld  # log γ_c
    lam_end = lam_next[..., -1:]  # log γ_G
    strict = torch.ones(G, G, dtype=torch.bool, device=k.device).tril(-1)
    # (γ_c(i)/γ_c(j)+1) for c(j) < c(i) (≤ 1), else 0; masked before exp so no entry overflows
    ratio = torch.where(strict, lam[..., :, None] - lam_next[..., None, :], float("-inf")).exp()
    ratio = ratio.repeat_interleave(C, dim=-1).repeat_interleave(C, dim=-2) * u2[..., None, :]  # (g, nb, l, l)
    gam = lam.exp().repeat_interleave(C, dim=-1)[..., None]  # (g, nb, l, 1): γ of each token's chunk
    kt = kb.transpose(-1, -2)
    x = torch.linalg.solve_triangular(ratio * (kb @ kt), torch.cat([gam * kb, vb], dim=-1), upper=False,
                                      unitriangular=True)  # the diagonal is taken as 1: (I + M)⁻¹ [γK, V]
    x_k, x_v = x.split([d, d], dim=-1)
    kw_t = ((lam_end - lam_next).exp().repeat_interleave(C, dim=-1) * u2)[..., None, :] * kt  # K̃ᵀ (g, nb, d, l)
    eye = torch.eye(d, device=k.device, dtype=k.dtype)
    trans = torch.baddbmm((lam_end.exp()[..., None] * eye).reshape(g * nb, d, d), kw_t.reshape(g * nb, d, L),
                          x_k.reshape(g * nb, L, d), alpha=-1).view(g, nb, d, d)
    offset = kw_t @ x_v  # (g, nb, d, d)
    starts = [w]
    # unbind, not trans[:, b]: each indexing op would allocate a zero gradient of the whole tensor
    for off_b, trans_b in zip(offset.unbind(1), trans.unbind(1)):
        w = torch.baddbmm(off_b, trans_b, w)
        starts.append(w)
    w0 = torch.stack(starts[:nb], dim=1)  # (g, nb, d, d): W at each block's start
    err = x_k @ w0 - x_v  # (g, nb, l, d)
    reads = gam * (qb @ w0) - (ratio * (qb @ kt)) @ err
    return w, reads.reshape(g, nb * L, d)[:, :m], err.reshape(g, nb * L, d)[:, :m]


def _chunk_chain(q, k, v, u, s_coef, decay, carry_m, carry_s, w, s):
    """With momentum: (W, S) through every complete chunk, one chunk per step. Returns (W, S after them, reads,
    errors `[g, m, d]`). The low-rank or the dense chain, whichever has fewer multiply-adds (`lowrank_steps`)."""
    g, m, d = k.shape
    nf = decay.shape[1]
    C = m // nf
    kc, vc = (t.reshape(g, nf, C, d) for t in (k, v))
    ku_t = ((2 * u)[..., None] * kc).transpose(-1, -2)  # (g, k, d, c): 2 Kᵀ diag(u)
    ks_t = ((2 * s_coef)[..., None] * kc).transpose(-1, -2)
    chain = _low_rank_chain if lowrank_steps(C, d) else _dense_chain
    starts = [w]
    w, s = chain(starts, w, s, kc, vc, ku_t, ks_t, decay, carry_m, carry_s)
    w_before = torch.stack(starts[:nf], dim=1)  # (g, k, d, d): W at each chunk's start
    err = (kc @ w_before - vc).reshape(g, m, d)
    reads = (q.reshape(g, nf, C, d) @ w_before).reshape(g, m, d)
    return w, s, reads, err


def _low_rank_chain(starts, w, s, kc, vc, ku_t, ks_t, decay, carry_m, carry_s):
    """(W, S) through every chunk as rank-c updates at the chunk-start W; appends each W to `starts`.
    Per chunk: E = K W − V;  W' = A·W + c_S·S − 2Kᵀdiag(u) E;  S' = E_η·S − 2Kᵀdiag(s) E."""
    parts = [t.unbind(1) for t in (kc, -vc, ku_t, ks_t, decay[..., None, None], carry_m[..., None, None],
                                   carry_s[..., None, None])]
    for k_c, nv_c, ku_c, ks_c, a_c, cm_c, cs_c in zip(*parts):
        err = torch.baddbmm(nv_c, k_c, w)  # (g, c, d): K W − V
        w, s = (torch.baddbmm(torch.addcmul(a_c * w, cm_c, s), ku_c, err, alpha=-1),
                torch.baddbmm(cs_c * s, ks_c, err, alpha=-1))
        starts.append(w)
    return w, s


def _dense_chain(starts, w, s, kc, vc, ku_t, ks_t, decay, carry_m, carry_s):
    """(W, S) through every chunk as one affine map each, all maps built at once; appends each W to `starts`.
    [W'; S'] = [[A·I − 2KᵀUK, c_S·I], [−2KᵀSK, E_η·I]] [W; S] + [2KᵀUV; 2KᵀSV] (U, S: diag(u), diag(s))."""
    d = w.shape[-1]
    eye = torch.eye(d, device=kc.device, dtype=kc.dtype)
    top = torch.cat([decay[..., None, None] * eye - ku_t @ kc, carry_m[..., None, None] * eye], dim=-1)
    bottom = torch.cat([-(ks_t @ kc), carry_s[..., None, None] * eye], dim=-1)
    trans = torch.cat([top, bottom], dim=-2)  # (g, k, 2d, 2d)
    offset = torch.cat([ku_t @ vc, ks_t @ vc], dim=-2)  # (g, k, 2d, d)
    x = torch.cat([w, s], dim=1)
    # unbind, not trans[:, c]: each indexing op would allocate a zero gradient of the whole tensor
    for off_c, trans_c in zip(offset.unbind(1), trans.unbind(1)):
        x = torch.baddbmm(off_c, trans_c, x)
        starts.append(x[:, :d])
    return x[:, :d], x[:, d:]

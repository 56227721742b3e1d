"""The chunked scan of a deep memory (paper Eq. 13-18): one MLP forward and analytic backward per chunk.

Within a chunk every token's gradient is taken at the chunk-start weights, so the momentum and
forgetting recurrences unroll into fixed per-token coefficients:
    M_end = A·M_0 + c_S·S_0 − Σ_j u_j ∇ℓ_j          S_end = E·S_0 − Σ_j s_j ∇ℓ_j
with A = Π(1−α), E = Πη, u_j = θ_j Σ_{t≥j} β_t D_tj, s_j = θ_j D_{C,j}, D_tj = Π_{j<i≤t} η_i,
β_t = Π_{i>t}(1−α_i), c_S = Σ_t β_t Π_{i≤t} η_i. For an MLP layer the per-token gradient is an outer
product h_j^T δ_j, so each weighted sum is one matmul and per-token gradients are never materialised.

Read top to bottom: `chunk_coefficients` (all chunks at once, from the gates), `chunk_scan` (the loop
over chunks), then the per-chunk helpers. `fused_chunk_scan` runs the same loop as one autograd op with a
hand-written backward (`titans.memory.chunk_fused`); `chunk_scan` hands over to it unless a switch it lacks is
on. `titans.memory.linear` is the fast path for a linear memory; `titans.memory.reference` is the
token-by-token float64 oracle all are tested against.

einops glossary: b = batch, h = heads, n/t = tokens, d = head_dim, g = (b h) groups, c = chunk tokens,
k = chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from titans.memory.chunk_fused import ChunkScan
from titans.memory.config import MemoryConfig
from titans.memory.mlp import MemoryMLP

# the chunk loop as one autograd op with a hand-written backward (titans.memory.chunk_fused); False = the loop
# of plain torch ops below, differentiated by autograd (the tests' gradient oracle, a benchmark row)
FUSED = True


def chunk_coefficients(lr: Tensor, log_eta: Tensor | None, log_keep: Tensor, chunk_size: int) -> tuple:
    """Per-chunk coefficients of Eq. 13-14 with gradients at the chunk-start weights (Eq. 16-18).

    Gates `[g, k*C]` for k complete chunks (log η None without momentum). Returns (u, s_coef `[g, k, C]`;
    decay, carry_m, carry_s `[g, k]` (carry_* None without momentum); θ used `[g, k, C]`) such that for each chunk
        M_end = decay·M_0 + carry_m·S_0 − Σ_j u_j ∇ℓ_j      S_end = carry_s·S_0 − Σ_j s_j ∇ℓ_j
    """
    C = chunk_size
    g = lr.shape[0]
    lr, log_keep = (t.reshape(g, -1, C) for t in (lr, log_keep))  # (g, k, c)
    keep_cum = torch.cumsum(log_keep, dim=-1)  # Σ_{i≤t} log(1−α_i)
    keep_all = keep_cum[..., -1:]  # (g, k, 1)
    beta = torch.exp(keep_all - keep_cum)  # β_t = Π_{i>t} (1−α_i)
    decay = torch.exp(keep_all).squeeze(-1)  # A = Π (1−α)
    if log_eta is None:  # no momentum
        u = lr * beta  # S_t = −θ_t ∇ℓ_t: D = I, E = 0
        s_coef = torch.zeros_like(lr)
        s_coef[..., -1] = lr[..., -1]
        carry_m = carry_s = None
    else:
        L = torch.cumsum(log_eta.reshape(g, -1, C), dim=-1)  # log Π_{i≤t} η_i
        diff = L[..., :, None] - L[..., None, :]  # (g, k, t, j): log D_tj for t ≥ j
        causal = torch.ones(C, C, dtype=torch.bool, device=lr.device).tril()
        D = torch.exp(torch.where(causal, diff, torch.full_like(diff, float("-inf"))))
        u = lr * (beta.unsqueeze(-2) @ D).squeeze(-2)  # θ_j Σ_t β_t D_tj
        s_coef = lr * D[..., -1, :]  # θ_j D_{C,j}
        carry_m = (beta * torch.exp(L)).sum(-1)  # c_S = Σ_t β_t Π_{i≤t} η_i
        carry_s = torch.exp(L[..., -1])  # E = Π η
    return u, s_coef, decay, carry_m, carry_s, lr


def cap_steps(u: Tensor, s_coef: Tensor, lr: Tensor, decay: Tensor, carry_m: Tensor | None, carry_s: Tensor | None,
              curvature: Tensor, cap: float) -> tuple[Tensor, Tensor, Tensor]:
    """The chunk step cap (`MemoryConfig.chunk_step_cap`): scale every θ_j of a chunk by one factor ≤ 1 so the
    chunk's total step, measured in the memory's output space, keeps the update a contraction.

    u, s_coef, lr, curvature: `[..., C]`; decay, carry_*: `[...]`. Returns (u, s_coef, lr) scaled.

    All tokens of a chunk step from the same (stale) weights, so the steps of similar keys add up, and momentum
    carries each step into later chunks: token j's total step is u_j now plus s_j·c_S·(1 + E + E² + …) later
    (assuming the same gates). A step of size u along ∇ℓ_j moves the memory's output at k_j by −2u·κ_j·e_j
    along its own error e_j = M(k_j) − v_j, where κ_j = ‖∇ℓ_j‖² / ‖2e_j‖² (`curvature`: the memory's neural
    tangent kernel at k_j along e_j) is ‖k_j‖² for a linear memory but grows with the weights of a deep one.
    Along a key the chunk maps the error by A − 2Σ_j u_j κ_j (A = Π(1−α)), which stays in [−1, 1] iff
    Σ u_j κ_j ≤ (1 + A)/2. So the cap is Σ_j (u_j + s_j·c_S/(1−E))·κ_j ≤ cap·(1 + A)/2.
    History: a cap on Σu alone (κ taken as 1) let a trained depth-2 MAG memory's steps grow with its own
    weights, 150× per 64 tokens to NaN; before that, Σu ≤ cap (no (1 + A)/2) allowed a factor −2 per chunk
    under strong forgetting, and a trained MAC memory grew 12× per 64 tokens.
    """
    total = (u * curvature).sum(-1, keepdim=True)
    if carry_m is not None:
        later = carry_m / (1 - carry_s).clamp_min(1e-6)  # c_S / (1 − E)
        total = total + (s_coef * curvature).sum(-1, keepdim=True) * later.unsqueeze(-1)
    limit = cap * (1 + decay.unsqueeze(-1)) / 2  # (..., 1); = cap without forgetting
    scale = (limit / total.clamp_min(1e-12)).clamp(max=1.0)
    return u * scale, s_coef * scale, lr * scale


def curvature(inputs: list[Tensor], deltas: list[Tensor]) -> Tensor:
    """Per-token κ_t = ‖∇ℓ_t‖² / ‖δ_{L,t}‖² = Σ_l ‖h_{l,t}‖²‖δ_{l,t}‖² / ‖δ_{L,t}‖² `[g, c]`, without gradient (a
    normaliser): how far a unit step along ∇ℓ_t moves the memory's output at k_t along its error. ‖k_t‖² if linear."""
    with torch.no_grad():
        sq = sum(h.pow(2).sum(-1) * d.pow(2).sum(-1) for h, d in zip(inputs, deltas))
        return sq / deltas[-1].pow(2).sum(-1).clamp_min(1e-30)


def chunk_scan(
    mlp: MemoryMLP,
    config: MemoryConfig,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    log_eta: Tensor,
    log_keep: Tensor,
    weights: dict[str, Tensor],
    momentum: dict[str, Tensor],
    n_buf: int,
    with_aux: bool = True,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], Tensor | None, Tensor | None, Tensor | None]:
    """Chunk loop. q/k/v: `[B, H, n, d]`, θ / log η / log(1−α): `[B, H, n]`; token 0 starts a chunk;
    reads only for tokens >= n_buf (the buffered ones were read by the previous call).

    Everything that depends only on the gates (the per-token coefficients of every chunk) is computed
    for all chunks at once before the loop; the loop runs, per chunk, one MLP forward on
    [queries | keys] (both at the weights after the previous chunk), the analytic backward on the
    keys, and one matmul per layer for the weight and momentum updates.

    `write_threshold`: tokens whose ‖∇ℓ_t‖ is below it get θ_t = 0 (before the clip and the cap). With
    `stop_grad_updates` the reads keep their graph and the write of each chunk is computed without one; the new
    weights pass gradient to the old ones as the identity (straight-through), the momentum carries none.
    """
    c = config
    B, H, n, _ = q.shape
    C = c.chunk_size
    if (FUSED and n >= C and c.surprise_clip == 0 and c.write_threshold == 0 and not c.stop_grad_updates
            and (not torch.compiler.is_compiling() or c.compile_scan)):
        return fused_chunk_scan(mlp, c, q, k, v, lr, log_eta, log_keep, weights, momentum, n_buf, with_aux)
    dtype = q.dtype
    names = mlp.names
    weights = [rearrange(weights[nm].to(dtype), "b h i o -> (b h) i o") for nm in names]
    momentum = [rearrange(momentum[nm].to(dtype), "b h i o -> (b h) i o") for nm in names]
    q, k, v = (rearrange(t, "b h n d -> (b h) n d") for t in (q, k, v))
    lr, log_keep = (rearrange(t, "b h n -> (b h) n") for t in (lr, log_keep))
    n_full = n // C
    stop = c.stop_grad_updates
    if stop:
        momentum = [m.detach() for m in momentum]
    coef = chunk_coefficients(
        lr[:, : n_full * C],
        None if log_eta is None else rearrange(log_eta, "b h n -> (b h) n")[:, : n_full * C],
        log_keep[:, : n_full * C],
        C,
    )

    # split / unbind once, not t[:, s:e] per chunk: each indexing op's backward allocates a zero gradient
    # of the whole tensor
    q_chunks, k_chunks, v_chunks = (t.split(C, dim=1) for t in (q, k, v))  # (g, c, d) each
    q_chunks = [q_chunks[0][:, n_buf:], *q_chunks[1:]]  # the buffered tokens were read by the previous call
    coef_chunks = [t.unbind(1) if t is not None else [None] * n_full for t in coef]
    reads, inputs_all, deltas_all, errors_all, lr_chunks = [], [], [], [], []
    for ci in range(n_full):
        n_read = q_chunks[ci].shape[1]
        coef_c = [t[ci] for t in coef_chunks]
        if stop:  # reads with the graph; the write sees detached weights and records none
            if n_read:
                reads.append(mlp.forward_batched(weights, q_chunks[ci])[0])
            write_w = [w.detach() for w in weights]
            with torch.no_grad():
                _, new_w, momentum, inputs, deltas, err, lr_c = write_chunk(
                    mlp, c, write_w, momentum, None, k_chunks[ci], v_chunks[ci], coef_c)
            # value: the new weights; gradient: identity to the weights before the chunk (straight-through)
            weights = [w + (nw - ww) if w.requires_grad else nw for w, nw, ww in zip(weights, new_w, write_w)]
        else:
            read, weights, momentum, inputs, deltas, err, lr_c = write_chunk(
                mlp, c, weights, momentum, q_chunks[ci] if n_read else None, k_chunks[ci], v_chunks[ci], coef_c)
            if read is not None:
                reads.append(read)
        inputs_all.append(inputs)
        deltas_all.append(deltas)
        if with_aux:
            errors_all.append(err)
        lr_chunks.append(lr_c)
    if n_full * C < n:  # unfinished chunk: read only; its tokens wait in the buffer
        reads.append(mlp.forward_batched(weights, q_chunks[n_full])[0])

    retrieved = rearrange(torch.cat(reads, dim=1), "(b h) t d -> b h t d", b=B)
    # per-token surprise ‖∇ℓ_t‖ of the written chunks (NaN for tokens still waiting in the buffer)
    surprise = torch.full((B * H, n), float("nan"), device=q.device, dtype=dtype) if with_aux else None
    lr_used = errors = None
    if with_aux:  # errors: (b h n d), NaN for tokens still waiting in the buffer
        errors = rearrange(pad_nan(errors_all, q), "(b h) n d -> b h n d", b=B)
        lr_used = lr.clone()
        if n_full:
            lr_used[:, : n_full * C] = torch.cat(lr_chunks, dim=1)
        lr_used = rearrange(lr_used, "(b h) n -> b h n", b=B)
    if n_full and with_aux:
        with torch.no_grad():
            per_layer = [torch.cat([chunk[layer] for chunk in inputs_all], 1) for layer in range(mlp.depth)]
            per_layer_d = [torch.cat([chunk[layer] for chunk in deltas_all], 1) for layer in range(mlp.depth)]
            surprise[:, : n_full * C] = surprise_norm(per_layer, per_layer_d)
    if surprise is not None:
        surprise = rearrange(surprise, "(b h) n -> b h n", b=B)
    new_w = {nm: rearrange(w, "(b h) i o -> b h i o", b=B) for nm, w in zip(names, weights)}
    new_m = {nm: rearrange(m, "(b h) i o -> b h i o", b=B) for nm, m in zip(names, momentum)}
    return retrieved, new_w, new_m, surprise, errors, lr_used


def write_chunk(
    mlp: MemoryMLP,
    config: MemoryConfig,
    weights: list[Tensor],
    momentum: list[Tensor],
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    coef: list[Tensor | None],
) -> tuple[Tensor | None, list[Tensor], list[Tensor], list[Tensor], list[Tensor], Tensor, Tensor]:
    """One chunk: the reads of `q` (`[g, r, d]` or None) and the write of `k`, `v` (`[g, c, d]`), both at the
    chunk-start `weights`, with the chunk's coefficients `coef` (u, s_coef, decay, carry_m, carry_s, θ).

    Returns (reads or None, new weights, new momentum, layer inputs h, output-gradients δ, errors M(k) − v,
    θ used `[g, c]` after the write threshold, the surprise clip and the chunk step cap).
    """
    c = config
    n_read = 0 if q is None else q.shape[1]
    x_in = torch.cat([q, k], dim=1) if n_read else k  # Eq. 15 reads and the inner forward: one MLP pass
    out, inputs, pre = mlp.forward_batched(weights, x_in)
    read = None
    if n_read:
        read = out[:, :n_read]
        out = out[:, n_read:]
        inputs = [h[:, n_read:] for h in inputs]
        pre = [z[:, n_read:] for z in pre]
    err = out - v  # (g, c, d): M(k) − v
    deltas = mlp.backward_batched(weights, pre, 2.0 * err)  # dℓ/dM(k) of Eq. 12
    u, s_coef, decay, carry_m, carry_s, lr_c = coef
    if c.write_threshold > 0:  # surprise-gated writes: a token below the threshold does not write
        with torch.no_grad():
            writes = (surprise_norm(inputs, deltas) >= c.write_threshold).to(u.dtype)
        u, s_coef, lr_c = u * writes, s_coef * writes, lr_c * writes
    if c.surprise_clip > 0:
        scale = (c.surprise_clip / surprise_norm(inputs, deltas).clamp_min(1e-12)).clamp(max=1.0)
        u, s_coef, lr_c = u * scale, s_coef * scale, lr_c * scale
    if c.chunk_step_cap > 0:
        u, s_coef, lr_c = cap_steps(u, s_coef, lr_c, decay, carry_m, carry_s, curvature(inputs, deltas),
                                    c.chunk_step_cap)
    new_w, new_m = apply_update(weights, momentum, inputs, deltas, u, s_coef, decay, carry_m, carry_s)
    return read, new_w, new_m, inputs, deltas, err, lr_c


def fused_chunk_scan(
    mlp: MemoryMLP,
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
    """`chunk_scan` with the chunk loop as one autograd op (`titans.memory.chunk_fused.ChunkScan`): the same
    results, the loop recorded once instead of per op, and a hand-written backward. Needs at least one complete
    chunk, no surprise clipping, no write threshold, no stop-gradient updates (`chunk_scan` chooses)."""
    c = config
    B, H, n, d = q.shape
    C = c.chunk_size
    dtype = q.dtype
    names = mlp.names
    w0 = [rearrange(weights[nm].to(dtype), "b h i o -> (b h) i o") for nm in names]
    m0 = [rearrange(momentum[nm].to(dtype), "b h i o -> (b h) i o") for nm in names]
    q, k, v = (rearrange(t, "b h n d -> (b h) n d") for t in (q, k, v))
    lr, log_keep = (rearrange(t, "b h n -> (b h) n") for t in (lr, log_keep))
    g = q.shape[0]
    nf, nr = n // C, -(-n // C)  # chunks written; chunks read (the last may be unfinished)
    u, s_coef, decay, carry_m, carry_s, lr_c = chunk_coefficients(
        lr[:, : nf * C], None if log_eta is None else rearrange(log_eta, "b h n -> (b h) n")[:, : nf * C],
        log_keep[:, : nf * C], C,
    )
    weight = limit = None
    if c.chunk_step_cap > 0:  # `cap_steps`'s per-chunk constants, all chunks at once: Σ_j weight_j κ_j ≤ limit
        limit = c.chunk_step_cap * (1 + decay) / 2
        weight = u
        if carry_m is not None:
            weight = u + s_coef * (carry_m / (1 - carry_s).clamp_min(1e-6)).unsqueeze(-1)  # u + s·c_S/(1 − E)
    pad = nr * C - n
    qc = (F.pad(q, (0, 0, 0, pad)) if pad else q).view(g, nr, C, d)  # (g, nr, c, d)
    x = torch.cat([qc[:, :nf], k[:, : nf * C].view(g, nf, C, d)], dim=2)  # (g, nf, 2c, d): queries | keys
    meta = (mlp.activation, mlp.depth, carry_m is not None, limit is not None, c.compile_scan)
    scan = _scan_outside_graph if torch.compiler.is_compiling() else ChunkScan.apply
    reads, errors, scale, surprise_sq, *state = scan(
        meta, x, qc[:, nf] if nr > nf else None, v[:, : nf * C].view(g, nf, C, d),
        torch.stack([-u, -s_coef], dim=-1), weight, limit, decay, carry_m, carry_s, *w0, *m0)
    retrieved = rearrange(reads.view(g, nr * C, d)[:, n_buf:n], "(b h) t d -> b h t d", b=B)
    surprise = errors_out = lr_used = None
    if with_aux:
        errors_out = rearrange(pad_nan([errors.view(g, nf * C, d)], q), "(b h) n d -> b h n d", b=B)
        lr_used = torch.cat([(lr_c * scale.unsqueeze(-1)).view(g, nf * C), lr[:, nf * C :]], dim=1)
        lr_used = rearrange(lr_used, "(b h) n -> b h n", b=B)
        surprise = torch.full((g, n), float("nan"), device=q.device, dtype=dtype)
        surprise[:, : nf * C] = surprise_sq.view(g, nf * C).clamp_min(0).sqrt()
        surprise = rearrange(surprise, "(b h) n -> b h n", b=B)
    depth = mlp.depth
    new_w = {nm: rearrange(w, "(b h) i o -> b h i o", b=B) for nm, w in zip(names, state[:depth])}
    new_m = {nm: rearrange(m, "(b h) i o -> b h i o", b=B) for nm, m in zip(names, state[depth:])}
    return retrieved, new_w, new_m, surprise, errors_out, lr_used


@torch.compiler.disable
def _scan_outside_graph(*args):
    """`ChunkScan` called from a compiled forward (`compile` with `compile_scan`): a graph break, so the forward
    around it compiles and the op's own loops run with their compiled blocks (traced, they would unroll into it)."""
    return ChunkScan.apply(*args)


def pad_nan(chunks: list[Tensor], like: Tensor) -> Tensor:
    """Concatenate per-chunk `[g, c, d]` tensors along tokens and pad with NaN to `like`'s `[g, n, d]`."""
    g, n, d = like.shape
    done = torch.cat(chunks, dim=1) if chunks else like.new_zeros(g, 0, d)
    return torch.cat([done, like.new_full((g, n - done.shape[1], d), float("nan"))], dim=1)


def surprise_norm(inputs: list[Tensor], deltas: list[Tensor]) -> Tensor:
    """Per-token ‖∇ℓ_t‖ from layer inputs h and output-gradients δ: ‖∇ℓ_t‖² = Σ_l ‖h_{l,t}‖² ‖δ_{l,t}‖²."""
    sq = sum(h.pow(2).sum(-1) * d.pow(2).sum(-1) for h, d in zip(inputs, deltas))
    return sq.clamp_min(0).sqrt()


def apply_update(
    weights: list[Tensor],
    momentum: list[Tensor],
    inputs: list[Tensor],
    deltas: list[Tensor],
    u: Tensor,
    s_coef: Tensor,
    decay: Tensor,
    carry_m: Tensor | None,
    carry_s: Tensor | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """M_end = A·M_0 + c_S·S_0 − Σ u_j h_j^T δ_j, S_end = E·S_0 − Σ s_j h_j^T δ_j, one matmul per layer.

    weights/momentum[l]: `[g, i, o]`; inputs[l]: `[g, c, i]`; deltas[l]: `[g, c, o]`; u, s_coef: `[g, c]`;
    decay, carry_*: `[g]`.
    """
    coef = torch.stack([-u, -s_coef], dim=1).unsqueeze(-1)  # (g, 2, c, 1)
    decay_b = decay[:, None, None]
    new_w, new_m = [], []
    for w, m, h, d in zip(weights, momentum, inputs, deltas):
        # both weighted sums in one batched matmul: h^T (−u ⊙ δ) and h^T (−s ⊙ δ)  -> (g, 2, i, o)
        grads = h.transpose(1, 2).unsqueeze(1) @ (coef * d.unsqueeze(1))
        w_next = torch.addcmul(grads[:, 0], decay_b, w)  # A·M_0 − Σ u ∇ℓ
        m_next = grads[:, 1]
        if carry_m is not None:
            w_next = torch.addcmul(w_next, carry_m[:, None, None], m)  # + c_S·S_0
            m_next = torch.addcmul(m_next, carry_s[:, None, None], m)  # E·S_0 − Σ s ∇ℓ
        new_w.append(w_next)
        new_m.append(m_next)
    return new_w, new_m

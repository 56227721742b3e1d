"""Test-time learning demo: write N random key -> value pairs into a fresh memory, read them back.

    python -m experiments.memory_demo [--dim 64] [--pairs 8 16 32 64 128 256] [--seed 0]

Nothing is trained: the outer parameters are fixed so that a token carries its key in q and k and its
value in v; every association is stored by the inner update (Eq. 12-14) while the sequence streams
through `NeuralMemory.forward`. Recall is read back from the final state with
`functional_call(mem.memory_model, weights of sample 0 / head 0, keys)` and counted correct when the
read is closer (cosine) to its own value than to any other stored value. The table compares a linear
and a deep memory, with and without momentum and forgetting.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from titans.memory import MemoryConfig, NeuralMemory

MOMENTUM_FORGET = dict(momentum=True, fixed_momentum_decay=0.5, forgetting=True, fixed_forget=0.001)
VARIANTS = {
    "linear": dict(depth=1),
    "linear+momentum+forget": dict(depth=1, **MOMENTUM_FORGET),
    "deep (L_M=2)": dict(depth=2),
    "deep+momentum+forget": dict(depth=2, **MOMENTUM_FORGET),
}


def build(dim: int, lr: float, chunk_size: int, **kw) -> NeuralMemory:
    """A memory whose token x = [key | value] gives q = k = key and v = value (no learned projections)."""
    kw.setdefault("momentum", False)
    kw.setdefault("forgetting", False)
    cfg = MemoryConfig(
        dim=2 * dim, heads=1, head_dim=dim, chunk_size=chunk_size, conv_kernel=0, input_norm=False,
        fixed_lr=lr, expansion=4, **kw,
    )
    mem = NeuralMemory(cfg)
    with torch.no_grad():
        w = torch.zeros(3 * dim, 2 * dim)
        eye = torch.eye(dim)
        w[:dim, :dim] = eye  # q = key
        w[dim : 2 * dim, :dim] = eye  # k = key
        w[2 * dim :, dim:] = eye  # v = value
        mem.to_qkv.weight.copy_(w)
    return mem


@torch.no_grad()
def recall(mem: NeuralMemory, n_pairs: int, dim: int, seed: int, passes: int = 1) -> float:
    """Fraction of the n stored pairs whose read is nearest (cosine) to its own value."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_pairs, dim, generator=g)
    values = torch.randn(n_pairs, dim, generator=g)
    x = torch.cat([keys, values], dim=-1).repeat(passes, 1)[None]  # (1, passes*n, 2*dim)
    pad = (-x.shape[1]) % mem.config.chunk_size  # complete the last chunk with zero tokens (v = 0, k = 0)
    x = F.pad(x, (0, 0, 0, pad))
    _, state = mem(x)
    weights = {name: w[0, 0] for name, w in state.weights.items()}
    reads = functional_call(mem.memory_model, weights, (F.normalize(F.silu(keys), dim=-1),))  # (n, dim)
    targets = F.silu(values)  # what was stored as v
    sims = F.normalize(reads, dim=-1) @ F.normalize(targets, dim=-1).T  # (n, n)
    return (sims.argmax(-1) == torch.arange(n_pairs)).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--pairs", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--lr", type=float, default=0.05, help="fixed inner learning rate θ")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--passes", type=int, default=4, help="how many times the pairs stream through")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    print(f"Recall of N key->value pairs written at test time (dim {args.dim}, θ={args.lr}, "
          f"chunk {args.chunk_size}, {args.passes} pass(es)); chance = 1/N\n")
    header = f"{'memory':<26}" + "".join(f"{'N=' + str(n):>8}" for n in args.pairs)
    print(header)
    print("-" * len(header))
    table = {}
    for name, kw in VARIANTS.items():
        torch.manual_seed(args.seed)
        mem = build(args.dim, args.lr, args.chunk_size, **kw)
        row = {n: recall(mem, n, args.dim, args.seed + n, args.passes) for n in args.pairs}
        table[name] = row
        print(f"{name:<26}" + "".join(f"{100 * r:>7.0f}%" for r in row.values()))
    print(f"\n{time.perf_counter() - start:.1f} s on {torch.get_num_threads()} CPU thread(s)")
    return table


if __name__ == "__main__":
    main()

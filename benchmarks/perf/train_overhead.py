"""Training cost of the memory: time per optimizer step of a MAG model against the same model without memory.

    python benchmarks/perf/train_overhead.py [--model qwen3_tiny] [--seq-lens 2048 8192] [--batch 1 8]
        [--repeats 7] [--segment-len 128] [--diagnostics] [--out results/perf/train_overhead.json]

What is measured: one training step exactly as `titans.training.module.TitansLitModule.training_step`
does it, without the Lightning Trainer around it — `run_segments(backward=True)` (the sequence in
segments of `--segment-len` tokens carrying the cache; backward and `detach_cache` every `--bptt-window`
segments), gradient clipping to 1.0 and an AdamW step — on `[batch, T]` random byte ids with the loss
on every token, for every batch size of `--batch` and every T of `--seq-lens`. Wall-clock time per step;
tokens/s = batch·T / that time.

Models (`--model`, a `conf/model` file): `qwen3_tiny` (random init, 2 layers, hidden 128) or `qwen3_0.6b_shape`
(random init with Qwen3-0.6B's layer shapes, 2 layers, byte vocabulary: the real proportion of memory to layer).

Beside each measured ratio the analytic one: matmul FLOPs of a training step of the row's model over the swa
model's (`analytic_flops`: projections, MLPs, attention scores over the window, LM head, and the memory's
projections, reads, chunk forward, backward and update sums; training = 3x the forward), and the memory's share
of the row's FLOPs. On hardware that runs every matmul at the same speed the measured ratio would be the analytic
one; the gap is per-op overhead.

Rows:
    full        conf/memory/none.yaml: the unpatched Qwen3, full attention
    swa         conf/memory/none.yaml with window 64: the same attention as MAG, no memory (the baseline)
    mag         conf/memory/mag.yaml (window 64, 4 heads, depth 2, chunk 16, memory in both layers)
    mag_linear  mag with memory.depth=1 (linear memory: the `titans.memory.linear` fast path)
    mag_mem1    mag with its memory in decoder layer 1 only (`memory_layers: [1]`; layer 0 sliding window only)
    mag_proof   what the CPU proof trains, composed from conf/experiment/cpu_proof_mag.yaml (as `train.py
                experiment=cpu_proof_mag` composes it, so the row follows the shipped file): a linear memory,
                one head of 256 in chunks of 4, tied keys with bilinear features, memory in layer 0 only
    mac_proof   the same for conf/experiment/cpu_proof_mac.yaml (MAC, 64-token segments, 16 long-term tokens)
    mag_proof_2l  mag_proof with its memory in both layers (the CPU proof before it moved to one memory layer)
    mag_autograd  mag with the deep memory's chunk loop differentiated by autograd op by op (the path before
                `titans.memory.chunk_fused`, whose hand-written backward every other deep row uses)
    mag_plain_io  mag with the memory's input and output sides in plain ops differentiated by autograd (the path
                before `titans.memory.fused_io`, which every other row whose switches allow it uses)
    mag_pyscan  mag with the fused chunk op's loops in Python (`titans.memory.chunk_native.NATIVE = False`; every other
                deep row runs them as the C++ loops of `titans.memory.chunk_native` where its size limit allows)
    *_compiled  mag and mag_proof with `memory.compile=true` (the memory's forward under torch.compile);
                `warmup_s` of the first step at each (batch, T) includes compiling for its shapes
    mag_scancompiled  mag with `memory.compile_scan=true`: the fused chunk op's forward and backward loops under
                torch.compile in blocks of 8 chunks (`titans.memory.chunk_fused`; compiled in the warm-up step)
    mag_allcompiled   mag_scancompiled with `memory.compile=true` too: the memory's forward around the scan compiled
The memory's diagnostics (aux tensors: surprise, errors, query/error cosine) are off, as on the training steps
that `DiagnosticsCallback` does not log (it asks on 2 of every `every_n_steps`); `--diagnostics` asks on every
step (the last segment's forward, as the callback does).
Every parameter trains (`--freeze none`, so the rows do the same backbone work; `--freeze default`
uses training's default, memory-only for MAG). Timings are interleaved (one step of each row in turn,
the order rotated each repeat) after one warm-up step per row, and the medians are reported with the
ratios to `swa` and `full`. One intra-op thread (`torch.set_num_threads(1)`) unless `--threads`.

JSON: `runs` has one entry per (batch, T), each with its `batch`; `target.cells` is keyed `row@T` for the
first batch of `--batch` (the headline, `settings.batch`) and `row@T/bN` for batch N of the others.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.perf.machine import add_malloc_argument, add_note_argument, apply_malloc, load_average, machine_info
from titans.io import write_json

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "conf/model"
ROWS = {
    "full": ("none.yaml", {}),
    "swa": ("none.yaml", {"window": 64}),
    "mag": ("mag.yaml", {"window": 64}),
    "mag_linear": ("mag.yaml", {"window": 64, "memory": {"depth": 1}}),
    "mag_mem1": ("mag.yaml", {"window": 64, "memory_layers": [1]}),
    # what the CPU proof trains: the memory composed from its experiment file, so the row cannot drift from it
    "mag_proof": ("experiment:cpu_proof_mag", {}),
    "mac_proof": ("experiment:cpu_proof_mac", {}),
}
# the default MAG with the deep memory's chunk loop differentiated op by op by autograd
# (`titans.memory.chunk.FUSED = False`) instead of `titans.memory.chunk_fused.ChunkScan`'s hand-written backward
ROWS["mag_autograd"] = ROWS["mag"]
AUTOGRAD_ROWS = {"mag_autograd"}
# the default MAG with the memory's input side (norm, q/k/v, conv, SiLU, ℓ2 norms) and output side (norm, gate,
# projection) in plain ops that autograd differentiates (`titans.memory.neural_memory.FUSED_IO = False`) instead of
# `titans.memory.fused_io`'s two ops
ROWS["mag_plain_io"] = ROWS["mag"]
PLAIN_IO_ROWS = {"mag_plain_io"}
# the default MAG with the fused chunk op's Python loop (`titans.memory.chunk_native.NATIVE = False`: the default before
# the C++ chunk scan of `titans.memory.chunk_native`, which the other deep rows within its size limit use)
ROWS["mag_pyscan"] = ROWS["mag"]
PYSCAN_ROWS = {"mag_pyscan"}
# the same memory in both layers (what the CPU proof trained before it moved to one memory layer)
ROWS["mag_proof_2l"] = ("experiment:cpu_proof_mag", {"memory_layers": None})
# the same rows with the memory's forward under torch.compile (memory.compile=true; compiled in the warm-up step)
ROWS.update({f"{name}_compiled": (conf, {**over, "memory": {**over.get("memory", {}), "compile": True}})
             for name, (conf, over) in list(ROWS.items()) if name in ("mag", "mag_proof")})
# the default MAG with the fused chunk op's loops compiled (memory.compile_scan=true, blocks of 8 chunks), and with the
# memory's forward around the scan compiled too (memory.compile=true beside it: the scan is a graph break)
ROWS["mag_scancompiled"] = ("mag.yaml", {"window": 64, "memory": {"compile_scan": True}})
ROWS["mag_allcompiled"] = ("mag.yaml", {"window": 64, "memory": {"compile_scan": True, "compile": True}})
BASELINES = ("swa", "full")
OVERHEAD_TARGET = 1.5  # the target: MAG costs at most 1.5x the baseline's time
# the default MAG (depth-2 memory in both layers): at most this many times the swa step, per model
MAG_TARGETS = {"qwen3_tiny": 2.5, "qwen3_0.6b_shape": 2.2}


def target_for(row: str, model: str) -> float:
    """The step-time target of a row (× swa): the default MAG's per model (`MAG_TARGETS`), 1.5 for the others."""
    base = row.removesuffix("_compiled")
    default_mag = ("mag", "mag_autograd", "mag_plain_io", "mag_pyscan", "mag_scancompiled", "mag_allcompiled")
    return MAG_TARGETS.get(model, OVERHEAD_TARGET) if base in default_mag else OVERHEAD_TARGET


def analytic_flops(model, seq_len: int) -> dict:
    """Matmul FLOPs per token of one forward of a (patched) Qwen3, and the memory's part of them.

    Per decoder layer: q/k/v/o projections, the gated MLP, attention scores and values over the tokens a query
    sees (the window, or on average half the sequence under full attention). Per `NeuralMemory`: q/k/v, gate,
    output-gate and output projections; per head and token a read of the memory MLP, and for the chunk update
    the MLP forward on the key, the backward of the error through the layers above the first, and one weighted
    gradient sum per weight matrix (two with momentum: the weights' and the momentum's). LM head. A training step
    counts 3× this (forward, and a backward of twice the forward).
    Returns {"total": FLOPs/token, "memory": FLOPs/token of the memories}.
    """
    from titans.memory import NeuralMemory

    cfg = model.config
    hidden, heads, kv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    titans = getattr(cfg, "titans", None) or {}
    window = titans.get("window")
    seen = min(window, seq_len) if window else (seq_len + 1) / 2  # keys a query attends to, on average
    proj = 2 * hidden * (heads + 2 * kv) * hd + 2 * heads * hd * hidden
    mlp = 3 * 2 * hidden * cfg.intermediate_size
    attn = 2 * 2 * heads * hd * seen
    total = cfg.num_hidden_layers * (proj + mlp + attn) + 2 * hidden * cfg.vocab_size
    memory = 0.0
    for m in model.modules():
        if isinstance(m, NeuralMemory):
            c = m.config
            dims = [c.head_dim] + [c.hidden_dim] * (c.depth - 1) + [c.head_dim]
            layer_mm = [2 * i * o for i, o in zip(dims[:-1], dims[1:])]  # one token through each layer
            sums = 2 if m._has_momentum else 1
            per_head = sum(layer_mm) * (2 + sums) + sum(layer_mm[1:])  # read + update fwd + sums + δ backprop
            memory += (2 * c.dim * 3 * c.inner_dim + 2 * c.dim * 3 * c.heads + 2 * c.inner_dim * c.dim
                       + (2 * c.dim * c.inner_dim if c.output_gate else 0) + c.heads * per_head)
    return {"total": total + memory, "memory": memory}


def model_names() -> list[str]:
    return sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))


def memory_conf(conf: str):
    """A row's base memory config: `conf/memory/<conf>`, or `experiment:<name>` — the `memory` that
    `train.py experiment=<name>` composes (defaults and the experiment's overrides)."""
    from omegaconf import OmegaConf

    if not conf.startswith("experiment:"):
        return OmegaConf.load(ROOT / "conf/memory" / conf)
    from benchmarks.peers.step_time import compose

    return compose(conf.removeprefix("experiment:")).memory


def build(row: str, freeze: str = "none", model: str = "qwen3_tiny"):
    """The `conf/model/<model>.yaml` Qwen3 for one row (see module docstring), in train mode."""
    from omegaconf import OmegaConf

    from titans.training.builders import build_model

    if row not in ROWS:
        raise ValueError(f"--rows {row!r}: allowed {list(ROWS)}")
    if model not in model_names():
        raise ValueError(f"--model {model!r}: allowed a conf/model file, one of {model_names()}")
    conf, overrides = ROWS[row]
    memory_cfg = OmegaConf.merge(memory_conf(conf), overrides)
    built, _ = build_model(OmegaConf.load(MODEL_DIR / f"{model}.yaml"), memory_cfg,
                           freeze=None if freeze == "default" else freeze)
    return built.train()


class Stepper:
    """One row's model, `TitansLitModule` (outside a Trainer) and AdamW; `step(ids)` is one training step."""

    def __init__(self, model, segment_len: int, bptt_window: int, grad_clip: float = 1.0, lr: float = 1e-3,
                 diagnostics: bool = False, fused: bool = True, fused_io: bool = True, native: bool = True):
        from titans.training.module import BPTTConfig, TitansLitModule

        self.module = TitansLitModule(model, BPTTConfig(segment_len=segment_len, bptt_window=bptt_window,
                                                        grad_clip=grad_clip))
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.grad_clip = grad_clip
        self.diagnostics = diagnostics  # as DiagnosticsCallback asks on the steps that log
        self.fused = fused  # titans.memory.chunk.FUSED during this row's steps
        self.fused_io = fused_io  # titans.memory.neural_memory.FUSED_IO during them
        self.native = native  # titans.memory.chunk_native.NATIVE during them

    def step(self, input_ids: torch.Tensor) -> tuple[float, float]:
        """(seconds, loss) of zero_grad + segments with backward + clip + optimizer step."""
        from titans.memory import chunk, chunk_native, neural_memory
        from titans.training.bptt import shift_targets

        before = chunk.FUSED, neural_memory.FUSED_IO, chunk_native.NATIVE
        chunk.FUSED, neural_memory.FUSED_IO, chunk_native.NATIVE = self.fused, self.fused_io, self.native
        try:
            return self._step(input_ids, shift_targets)
        finally:
            chunk.FUSED, neural_memory.FUSED_IO, chunk_native.NATIVE = before

    def _step(self, input_ids: torch.Tensor, shift_targets) -> tuple[float, float]:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss, finite = self.module.run_segments(input_ids, shift_targets(input_ids), backward=True,
                                                diagnostics=self.diagnostics)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.grad_clip)
        if finite and torch.isfinite(grad_norm):  # the module skips non-finite steps too
            self.opt.step()
        return time.perf_counter() - start, float(loss)


def measure(steppers: dict[str, Stepper], seq_len: int, batch: int, repeats: int, seed: int = 0) -> dict:
    """Interleaved step times of every row at one sequence length; medians, tokens/s, measured and analytic
    ratios."""
    ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    names = list(steppers)
    times: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    warmup = {n: steppers[n].step(ids)[0] for n in names}  # warm-up (and compile, for the *_compiled rows)
    for rep in range(repeats):
        for n in names[rep % len(names):] + names[: rep % len(names)]:
            seconds, loss = steppers[n].step(ids)
            times[n].append(seconds)
            losses[n].append(loss)
    rows = {}
    for n in names:
        med = statistics.median(times[n])
        rows[n] = {"step_s_median": med, "step_s_all": times[n], "tokens_per_s": batch * seq_len / med,
                   "warmup_s": warmup[n],
                   "finite_losses": sum(1 for x in losses[n] if x == x and abs(x) != float("inf")),
                   "trainable_params": sum(p.numel() for p in steppers[n].params)}
        flops = analytic_flops(steppers[n].module.model, seq_len)
        rows[n]["train_flops_per_token"] = 3 * flops["total"]
        rows[n]["memory_flop_share"] = flops["memory"] / flops["total"]
    for n in names:
        for base in BASELINES:
            if base in rows and n != base:
                # median of the per-repeat ratios: both steps of a repeat ran back to back
                ratios = [a / b for a, b in zip(times[n], times[base])]
                rows[n][f"time_ratio_vs_{base}"] = statistics.median(ratios)
                flops = rows[n]["train_flops_per_token"] / rows[base]["train_flops_per_token"]
                rows[n][f"flop_ratio_vs_{base}"] = flops
    return {"seq_len": seq_len, "batch": batch, "rows": rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3_tiny", help="a conf/model file (random-init ones: qwen3_tiny, "
                        "qwen3_0.6b_shape)")
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[2048, 8192], help="sequence lengths T")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"of {list(ROWS)}")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes (each gets its ratios)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--segment-len", type=int, default=128, help="bptt.segment_len (conf/train.yaml default)")
    parser.add_argument("--bptt-window", type=int, default=2, help="bptt.bptt_window (conf/train.yaml default)")
    parser.add_argument("--freeze", default="none", help="none (every parameter trains) | default (training's)")
    parser.add_argument("--diagnostics", action="store_true", help="record the memory diagnostics on every step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/perf/train_overhead.json")
    add_note_argument(parser)
    add_malloc_argument(parser)
    args = parser.parse_args(argv)
    if args.model not in model_names():
        raise ValueError(f"--model {args.model!r}: allowed a conf/model file, one of {model_names()}")
    bad = [r for r in args.rows if r not in ROWS]
    if bad:
        raise ValueError(f"--rows {bad}: allowed {list(ROWS)}")
    if args.freeze not in ("none", "default"):
        raise ValueError(f"--freeze {args.freeze!r}: allowed 'none' (every parameter trains) or 'default' "
                         f"(memory-only for MAG, everything for the baselines)")
    for flag, value in (("--batch", min(args.batch)), ("--repeats", args.repeats),
                        ("--segment-len", args.segment_len), ("--bptt-window", args.bptt_window),
                        ("--threads", args.threads)):
        if value <= 0:
            raise ValueError(f"{flag} {value}: allowed an int > 0")
    if len(set(args.batch)) != len(args.batch):
        raise ValueError(f"--batch {args.batch}: allowed distinct batch sizes")
    if any(t <= 1 for t in args.seq_lens):
        raise ValueError(f"--seq-lens {args.seq_lens}: allowed ints > 1 (a loss needs two tokens)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_at_start = load_average()
    torch.set_num_threads(args.threads)
    malloc = apply_malloc(args.malloc)
    # the *_compiled rows compile one graph per (config, batch, state layout) in this one process: more than
    # dynamo's default limit of 8 per function, past which it would silently run eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    steppers = {r: Stepper(build(r, args.freeze, args.model), args.segment_len, args.bptt_window,
                           diagnostics=args.diagnostics, fused=r not in AUTOGRAD_ROWS,
                           fused_io=r not in PLAIN_IO_ROWS, native=r not in PYSCAN_ROWS) for r in args.rows}
    runs = []
    head = (f"{'T':>6} {'row':<18} {'s/step':>8} {'tokens/s':>9} {'vs swa':>7} {'FLOPs vs swa':>12} {'vs full':>8} "
            f"{'memory FLOPs':>12} {'params':>10}")
    for batch in args.batch:
        print(f"\n{args.model}: training steps, batch {batch}, segment {args.segment_len}, "
              f"bptt window {args.bptt_window}, freeze {args.freeze}, {args.threads} thread(s), "
              f"median of {args.repeats}\n")
        print(head)
        print("-" * len(head))
        for seq_len in args.seq_lens:
            run = measure(steppers, seq_len, batch, args.repeats, args.seed)
            for name, r in run["rows"].items():
                vs = [f"{r[k]:.2f}x" if k in r else "-"
                      for k in ("time_ratio_vs_swa", "flop_ratio_vs_swa", "time_ratio_vs_full")]
                print(f"{seq_len:>6} {name:<18} {r['step_s_median']:>8.3f} {r['tokens_per_s']:>9.0f} {vs[0]:>7} "
                      f"{vs[1]:>12} {vs[2]:>8} {100 * r['memory_flop_share']:>11.0f}% {r['trainable_params']:>10}",
                      flush=True)
            runs.append(run)
    target = {}
    for run in runs:
        suffix = "" if run["batch"] == args.batch[0] else f"/b{run['batch']}"
        for name, r in run["rows"].items():
            if name.startswith("mag") and "time_ratio_vs_swa" in r:
                limit = target_for(name, args.model)
                target[f"{name}@{run['seq_len']}{suffix}"] = {
                    "time_ratio_vs_swa": r["time_ratio_vs_swa"], "flop_ratio_vs_swa": r["flop_ratio_vs_swa"],
                    "memory_flop_share": r["memory_flop_share"], "target": limit,
                    "met": r["time_ratio_vs_swa"] <= limit}
    results = {
        "benchmark": "train_overhead",
        "command": "python benchmarks/perf/train_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(args.threads, args.note, load_at_start, malloc=malloc),
        "settings": {"model": f"conf/model/{args.model}.yaml", "rows": {k: list(v) for k, v in ROWS.items()
                                                                                 if k in args.rows},
                     "input": f"random byte ids in [0, 256), seed {args.seed}, loss on every token",
                     "batch": args.batch[0], "batches": args.batch, "segment_len": args.segment_len,
                     "bptt_window": args.bptt_window, "diagnostics": args.diagnostics,
                     "freeze": args.freeze, "optimizer": "AdamW lr 1e-3, grad clip 1.0", "repeats": args.repeats},
        "runs": runs,
        "target": {"max_time_ratio_vs_swa": {"mag": MAG_TARGETS.get(args.model, OVERHEAD_TARGET),
                                             "others": OVERHEAD_TARGET}, "cells": target},
    }
    print()
    for key, t in target.items():
        print(f"{key}: {t['time_ratio_vs_swa']:.2f}x the swa step time; target <= {t['target']}x: "
              f"{'met' if t['met'] else 'NOT met'} (FLOPs {t['flop_ratio_vs_swa']:.2f}x swa's, memory "
              f"{100 * t['memory_flop_share']:.0f}% of them)")
    write_json(Path(args.out), results)
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()

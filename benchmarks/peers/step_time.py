"""One training step of the CPU-proof model with our memory vs titans-pytorch's, per curriculum stage, interleaved.

    python -m benchmarks.peers.step_time [--experiment cpu_proof_mag] [--repeats 3] [--out FILE.json]

Builds the `experiment` model twice (ours; `use_titans_pytorch_memory` on the same config), then for each
curriculum stage runs the stage's training step (its batch size, sequence length, segments and bptt window;
forward + backward through `TitansLitModule.run_segments`, answer-only loss on the last tokens) on random
bytes, alternating ours / peer `repeats` times, and prints the median seconds per step and the curriculum's
training time extrapolated from them (steps x median; validation and checkpoints not counted). One thread
(`torch.set_num_threads(1)`), as the CPU proof trains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from titans.io import write_json

ROOT = Path(__file__).resolve().parents[2]
ANSWER_TOKENS = 8  # positions with a loss at the end of each sequence (the answer)


def compose(experiment: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose("train", overrides=[f"experiment={experiment}"])


def step_seconds(module, batch: int, seq_len: int, vocab: int) -> float:
    ids = torch.randint(0, vocab, (batch, seq_len))
    targets = torch.full_like(ids, -100)
    targets[:, -ANSWER_TOKENS:] = ids[:, -ANSWER_TOKENS:]
    module.model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss, finite = module.run_segments(ids, targets, backward=True)
    seconds = time.perf_counter() - start
    if not finite:
        raise RuntimeError(f"non-finite loss {loss} in the timing step")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.peers.titans_pytorch import use_titans_pytorch_memory
    from titans.training.builders import build_model
    from titans.training.module import BPTTConfig, TitansLitModule
    from titans.training.stages import apply_stage, stages_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="cpu_proof_mag")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats}: allowed an int >= 1")
    torch.set_num_threads(1)
    cfg = compose(args.experiment)
    torch.manual_seed(0)
    ours, tok = build_model(cfg.model, cfg.memory, freeze="none")
    torch.manual_seed(0)
    peer = use_titans_pytorch_memory(build_model(cfg.model, cfg.memory, freeze="none")[0])
    models = {"ours": ours, "titans_pytorch": peer}
    rows, total = [], {name: 0.0 for name in models}
    for i, stage in enumerate(stages_of(cfg)):
        scfg = apply_stage(cfg, i)
        bptt = BPTTConfig(segment_len=int(scfg.bptt.segment_len), bptt_window=int(scfg.bptt.bptt_window))
        modules = {name: TitansLitModule(m, bptt) for name, m in models.items()}
        batch, seq_len, steps = int(scfg.data.batch_size), int(scfg.data.seq_len), int(scfg.trainer.max_steps)
        times: dict[str, list[float]] = {name: [] for name in models}
        for module in modules.values():  # warm-up
            step_seconds(module, batch, seq_len, len(tok))
        for _ in range(args.repeats):
            for name, module in modules.items():
                times[name].append(step_seconds(module, batch, seq_len, len(tok)))
        row = {"stage": stage.name, "batch": batch, "seq_len": seq_len, "steps": steps}
        for name, ts in times.items():
            row[f"{name}_s"] = statistics.median(ts)
            total[name] += steps * row[f"{name}_s"]
        row["ratio"] = row["titans_pytorch_s"] / row["ours_s"]
        rows.append(row)
        print(f"{stage.name:>8} B={batch} T={seq_len:>5} steps={steps:>4}  ours {row['ours_s']:.3f} s  "
              f"titans_pytorch {row['titans_pytorch_s']:.3f} s  ({row['ratio']:.1f}x)", flush=True)
    result = {"experiment": args.experiment, "threads": 1, "stages": rows,
              "curriculum_train_s": total, "repeats": args.repeats}
    print(f"curriculum (training steps only): ours {total['ours'] / 60:.1f} min, "
          f"titans_pytorch {total['titans_pytorch'] / 60:.1f} min")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

"""The CPU proof: train a tiny Qwen3 per variant, then measure recall far beyond its window.

    python -m experiments.cpu_proof [--variants mag swa] [--lengths 1024 2048 4096] [--samples 20]
                                   [--tasks passkey hashhop hashhop_pairs8 passkey_essay hashhop_essay]
                                   [--hashhop-pairs 0]
                                   [--out results/cpu_proof] [--steps-scale 1.0] [--checkpoint CKPT]
                                   [--curves-only]

For each variant (mag, mac, mal: memory; swa: the same model with sliding-window attention only;
titans_pytorch: the peer, `mag` with titans-pytorch 0.5.5's NeuralMemory as its memory, see below):
  1. train with `python -m titans.training.curriculum experiment=cpu_proof_<variant>` (composed here with
     Hydra's compose API; stages and their checkpoints under <train-dir>/<variant>/),
  2. load the last stage's checkpoint into the model built from the same config,
  3. evaluate pass-key and single-hop hash-hop retrieval through evaluate.py's path (benchmarks.evaluate: the
     context streamed through the model's cache in segments, then greedy decoding; benchmarks.runner.run_suite)
     at 16-64x the attention window, plus a depth x length pass-key heatmap for the first variant,
  4. write <out>/summary.json shaped {variant: {task: {length: accuracy percent}}} (merged into what it
     holds when written, under a lock on the folder, so cells evaluated at other lengths or by another run, even
     one running at the same time on the other core, stay), results.md (the
     table), <out>/<variant>/curve.csv (its training curve, stages concatenated), curves.png (every
     variant's curve.csv in <out>, so re-running one variant keeps the others) and the commands that made
     them (commands.txt). `--curves-only` redoes just the last two from what --train-dir holds.

The peer row `titans_pytorch` composes `experiment=cpu_proof_mag` (the same model, curriculum, memory
placement, gate and evaluation, whatever cpu_proof_mag holds) plus `++memory.memory_impl=` the adapter
`benchmarks.peers.titans_pytorch.use_titans_pytorch_memory`, which swaps each memory for titans-pytorch's
`NeuralMemory` matched to the same MemoryConfig (the mismatches it cannot avoid are listed in that module).

Everything is measured, nothing is assumed: a variant that does not learn shows its chance-level
numbers. Training curves and per-layer memory diagnostics (gate, θ, surprise, weight norm) are in each
stage's csv/metrics.csv.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from titans.io import atomic_path, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("mag", "mac", "mal", "swa", "titans_pytorch")
# variant -> (the experiment it is trained as, overrides on top): the peer is MAG with another memory
PEERS = {
    # titans-pytorch has no single head wider than the model (MAG's one head of 256 at hidden 128): two heads of 128,
    # the same q/k/v width (its state is half ours: 2 x 128² against 256²)
    "titans_pytorch": ("mag", ["++memory.memory_impl=benchmarks.peers.titans_pytorch.use_titans_pytorch_memory",
                               "task_name=cpu_proof_titans_pytorch", "memory.memory.heads=2",
                               "memory.memory.head_dim=128"]),
}
# summary task name -> (benchmark suite, data_gen params). The curriculum trains without the intro sentence; the
# variations are the issue-14 cells: 8 distractor pairs in every prompt, Paul Graham essays as the haystack.
TASKS = {
    "passkey": ("passkey", {"intro": False}),
    "hashhop": ("hashhop", {"intro": False}),
    "hashhop_pairs8": ("hashhop", {"intro": False, "n_pairs": 8}),
    "passkey_essay": ("passkey", {"intro": False, "haystack": "essay"}),
    "hashhop_essay": ("hashhop", {"intro": False, "haystack": "essay"}),
}
# variations of the same skills that no stage trains as such (other haystacks, key formats, counts and lengths of
# access tokens): `--tasks` takes them too (`--tasks variations`: all); `make proof` measures them for MAG
VARIATIONS = {
    "passkey_code": ("passkey", {"intro": False, "haystack": "code"}),
    "passkey_9digits": ("passkey", {"intro": False, "digits": 9}),
    "passkey_intro": ("passkey", {"intro": True}),
    "hashhop_code": ("hashhop", {"intro": False, "haystack": "code"}),
    "hashhop_mixed_pairs3": ("hashhop", {"intro": False, "haystack": "mixed", "n_pairs": 3}),
    "hashhop_pairs4": ("hashhop", {"intro": False, "n_pairs": 4}),
    "hashhop_pairs16": ("hashhop", {"intro": False, "n_pairs": 16}),
    "hashhop_len5_pairs12": ("hashhop", {"intro": False, "hash_len": 5, "n_pairs": 12}),
    "hashhop_len8_pairs6": ("hashhop", {"intro": False, "hash_len": 8, "n_pairs": 6}),
    # 8 pairs, 2 of the distractor users one or two characters away from the queried id (User_4a113 beside User_4a11d)
    "hashhop_pairs8_near2": ("hashhop", {"intro": False, "n_pairs": 8, "near_users": 2}),
}
ALL_TASKS = {**TASKS, **VARIATIONS}
DEFAULT_TASKS = ("passkey", "hashhop")


def compose(variant: str, out_dir: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    experiment, peer_overrides = PEERS.get(variant, (variant, []))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose("train", overrides=[f"experiment=cpu_proof_{experiment}", *peer_overrides,
                                                 f"paths.output_dir={out_dir}", *overrides])


def scale_steps(cfg, factor: float) -> None:
    """Shorten (or lengthen) every stage: max_steps and val_check_interval times `factor`."""
    for stage in cfg.curriculum.stages:
        steps = max(2, int(stage.trainer.max_steps * factor))
        stage.trainer.max_steps = steps
        stage.trainer.val_check_interval = max(1, min(int(stage.trainer.val_check_interval * factor), steps))


def train(variant: str, out_dir: Path, overrides: list[str], steps_scale: float) -> tuple[object, Path]:
    from titans.training.curriculum import run_curriculum

    cfg = compose(variant, out_dir, overrides)
    if steps_scale != 1.0:
        scale_steps(cfg, steps_scale)
    stages = list(cfg.curriculum.stages)
    last = out_dir / f"{len(stages)}_{stages[-1].name}" / "checkpoints" / "last.ckpt"
    if not last.exists():
        run_curriculum(cfg)
    if not last.exists():
        raise FileNotFoundError(f"training of {variant} finished without {last}; see the stage logs in {out_dir}")
    return cfg, last


def evaluate(variant: str, cfg, ckpt: Path, out_dir: Path, lengths: list[int], samples: int,
             heatmap: bool, tasks: dict | None = None) -> dict:
    """The variant's checkpoint on each task through evaluate.py's path (`benchmarks.evaluate`: the model built
    from the training config, the checkpoint loaded, `run_suite`); returns {task: {length: accuracy}}."""
    import torch

    from benchmarks.evaluate import evaluate_model, main_model, seed_everything
    from titans.training.builders import to_plain

    torch.set_num_threads(int(cfg.get("cpu_threads") or torch.get_num_threads()))
    run = {"model": to_plain(cfg.model), "memory": to_plain(cfg.memory), "checkpoint": str(ckpt),
           "model_name": variant, "device": "cpu", "segment_len": 256, "seed": 0,
           # `allow_arch_mismatch=true` with --checkpoint: evaluate a checkpoint under a changed switch on purpose
           "allow_arch_mismatch": bool(cfg.get("allow_arch_mismatch", False))}
    seed_everything(run["seed"])
    model_name, model, tokenizer = main_model(run)
    by_suite: dict[str, dict] = {}  # one run per suite, a table row per task (the suite's `rows` option)
    for task, (suite, params) in (tasks or {t: ALL_TASKS[t] for t in DEFAULT_TASKS}).items():
        by_suite.setdefault(suite, {})[task] = params
    table = {}
    for suite, rows in by_suite.items():
        bench = {"name": suite, "lengths": lengths, "samples": samples, "rows": rows}
        summary = evaluate_model(model_name, model, tokenizer, bench, out_dir / suite, run)
        for task in rows:
            table[task] = {str(k): float(v) for k, v in summary["table"][task].items()}
    if heatmap:
        bench = {"name": "niah", "lengths": lengths, "samples": max(1, samples // 4), "depths": [0, 25, 50, 75, 90],
                 "task_params": {"haystack": "noise", "intro": False}}
        evaluate_model(model_name, model, tokenizer, bench, out_dir / "niah", run)
    return table


CURVE_FIELDS = ("stage", "stage_step", "step", "train_loss", "val_answer_acc")


def export_curve(variant_dir: Path, dest: Path) -> int:
    """A variant's training curve from its stages' csv logs (`<variant_dir>/<i>_<stage>/csv/metrics.csv`) ->
    `dest` (CSV: stage, stage_step, step with the stages concatenated, train_loss, val_answer_acc).

    The logs stay under the (uncommitted) training directory; this small CSV sits beside the results, so
    curves.png can be redrawn for every variant whatever was trained on this machine. Returns the rows."""
    rows, offset = [], 0
    for metrics in sorted(variant_dir.glob("*_*/csv/metrics.csv")):
        stage, last = metrics.parent.parent.name, None
        with open(metrics) as f:
            for r in csv.DictReader(f):
                loss, acc = r.get("train/loss") or "", r.get("val/answer_acc") or ""
                if not (loss or acc):
                    continue
                last = int(r["step"])
                rows.append({"stage": stage, "stage_step": last, "step": offset + last,
                             "train_loss": loss, "val_answer_acc": acc})
        offset = offset + last + 1 if last is not None else offset
    if rows:
        text = io.StringIO()
        writer = csv.DictWriter(text, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        write_text(dest, text.getvalue())
    return len(rows)


def curves(out: Path) -> list[str]:
    """Training loss of every variant with an `<out>/<variant>/curve.csv` -> `<out>/curves.png`; returns
    the variants drawn (none: no file written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = []
    for variant in VARIANTS:
        path = out / variant / "curve.csv"
        if not path.exists():
            continue
        with open(path) as f:
            points = [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(f) if r["train_loss"]]
        if points:
            ax.plot(*zip(*points), label=variant)
            drawn.append(variant)
    if not drawn:  # nothing trained into these results (e.g. --checkpoint): no empty plot
        plt.close(fig)
        return drawn
    ax.set_xlabel("training step (stages concatenated)")
    ax.set_ylabel("answer loss")
    ax.legend()
    ax.set_title("CPU proof: training loss")
    fig.tight_layout()
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return drawn


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on `directory` itself (flock on its descriptor: no lock file is left behind);
    without fcntl (Windows) no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX everywhere we run
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge_summary(path: Path, variant: str, measured: dict) -> dict:
    """`measured` ({task: {length: accuracy}}) merged into the summary.json at `path` as it is *now* (re-read
    under a lock on its folder, written atomically): two runs writing the same results folder at once (e.g. one
    per core) keep each other's cells. Returns the merged summary."""
    with _locked(path.parent):
        summary = json.loads(path.read_text()) if path.exists() else {}
        for task, row in measured.items():  # other tasks and lengths of this variant stay
            summary.setdefault(variant, {}).setdefault(task, {}).update(row)
        write_json(path, summary)
    return summary


def markdown(summary: dict, lengths: list[int]) -> str:
    head = "| variant | task | " + " | ".join(f"{n} tokens" for n in lengths) + " |"
    lines = [head, "|" + "---|" * (len(lengths) + 2)]
    for variant, tasks in summary.items():
        for task, row in tasks.items():
            cells = " | ".join(f"{row[str(n)]:.0f}%" if str(n) in row else "–" for n in lengths)
            lines.append(f"| {variant} | {task} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["mag"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--out", default="results/cpu_proof")
    parser.add_argument("--train-dir", default="outputs/cpu_proof", help="checkpoints and logs (not committed)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's max_steps")
    parser.add_argument("--no-heatmap", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                        help=f"of {list(TASKS)} or the untrained variations {list(VARIATIONS)} ('variations': all)")
    parser.add_argument("--hashhop-pairs", type=int, default=0,
                        help="distractor links in every hash-hop prompt (data_gen n_pairs; training used 0)")
    parser.add_argument("--checkpoint", default=None,
                        help="evaluate this checkpoint of the (one) variant's model instead of training it")
    parser.add_argument("--curves-only", action="store_true",
                        help="only export the --variants' training curves from --train-dir and redraw curves.png")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for training, e.g. cpu_threads=2")
    args = parser.parse_args(argv)
    bad = sorted(set(args.variants) - set(VARIANTS))
    if bad:
        raise ValueError(f"--variants {bad}: allowed {list(VARIANTS)}")
    # "variations" stands for every untrained variation (make proof's list is this one)
    args.tasks = [t for name in args.tasks for t in (VARIATIONS if name == "variations" else [name])]
    bad_tasks = sorted(set(args.tasks) - set(ALL_TASKS))
    if bad_tasks:
        raise ValueError(f"--tasks {bad_tasks}: allowed {list(ALL_TASKS)}")
    if args.hashhop_pairs < 0:
        raise ValueError(f"--hashhop-pairs={args.hashhop_pairs}: allowed an int >= 0")
    tasks = {t: (ALL_TASKS[t][0], dict(ALL_TASKS[t][1])) for t in args.tasks}
    if "hashhop" in tasks and args.hashhop_pairs:
        tasks["hashhop"][1]["n_pairs"] = args.hashhop_pairs
    if args.checkpoint is not None:
        if len(args.variants) != 1:
            raise ValueError(f"--checkpoint with --variants {args.variants}: allowed exactly one variant")
        if not Path(args.checkpoint).is_file():
            raise ValueError(f"--checkpoint={args.checkpoint}: no such file")
    if args.steps_scale <= 0:
        raise ValueError(f"--steps-scale={args.steps_scale}: allowed a float > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.curves_only:
        for variant in args.variants:
            if not export_curve(Path(args.train_dir) / variant, out / variant / "curve.csv"):
                print(f"{variant}: no training logs under {Path(args.train_dir) / variant}")
        print(f"curves.png: {curves(out)}")
        with open(out / "commands.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M')}  python -m experiments.cpu_proof {' '.join(argv)}\n")
        return json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    summary_path = out / "summary.json"
    timings = {}
    for i, variant in enumerate(args.variants):
        start = time.perf_counter()
        train_dir = Path(args.train_dir) / variant
        if args.checkpoint is not None:
            cfg, ckpt = compose(variant, train_dir, args.overrides), Path(args.checkpoint)
        else:
            cfg, ckpt = train(variant, train_dir, args.overrides, args.steps_scale)
        trained = time.perf_counter()
        measured = evaluate(variant, cfg, ckpt, out / variant, args.lengths, args.samples,
                            heatmap=(i == 0 and not args.no_heatmap), tasks=tasks)
        timings[variant] = {"train_s": trained - start, "eval_s": time.perf_counter() - trained}
        if args.checkpoint is None:
            export_curve(train_dir, out / variant / "curve.csv")
        summary = merge_summary(summary_path, variant, measured)  # after every variant: kept if a later one fails
        print(f"\n{variant}: {measured}  ({timings[variant]['train_s']:.0f} s train, "
              f"{timings[variant]['eval_s']:.0f} s eval)", flush=True)
    table = markdown(summary, sorted({int(n) for tasks in summary.values() for row in tasks.values() for n in row}))
    write_text(out / "results.md", table)
    with open(out / "commands.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M')}  python -m experiments.cpu_proof {' '.join(argv)}"
                f"  # timings {json.dumps(timings)}\n")
    try:
        curves(out)
    except Exception as e:  # noqa: BLE001 - a plot must not lose the results above
        print(f"curves.png not written: {e}")
    print("\n" + table)
    return summary


if __name__ == "__main__":
    main()

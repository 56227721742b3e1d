"""Tabulate a Hydra sweep: one row per job, the overrides that vary between jobs, and the job's metrics.

    python train.py -m memory=mag,mal memory.window=64,128 paths.output_dir=outputs/sweep
    python -m benchmarks.sweep outputs/sweep                 # prints the table, writes sweep.md / sweep.json

A job is a folder holding `metrics.json` (written by `train(cfg)`) and Hydra's `.hydra/overrides.yaml`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from titans.io import write_json, write_text

DEFAULT_METRICS = ("global_step", "skipped_steps", "train/loss", "val/loss", "val/answer_acc")


def _overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    import yaml

    return dict(o.split("=", 1) for o in (yaml.safe_load(path.read_text()) or []) if "=" in o)


def collect(sweep_dir: str | Path, metrics: tuple[str, ...] = DEFAULT_METRICS) -> list[dict[str, Any]]:
    """Rows {"job", <override>: value for the overrides that differ between jobs, <metric>: value}, in job order."""
    root = Path(sweep_dir)
    files = sorted(root.rglob("metrics.json"), key=lambda p: [int(s) if s.isdigit() else s
                                                              for s in p.parent.relative_to(root).parts])
    if not files:
        raise ValueError(f"{root} holds no */metrics.json; give the directory of a sweep (python train.py -m ...), "
                         f"the paths.output_dir it ran with.")
    jobs = [(f.parent, _overrides(f.parent), json.loads(f.read_text())) for f in files]
    keys = sorted({k for _, o, _ in jobs for k in o})
    varying = [k for k in keys if len({o.get(k) for _, o, _ in jobs}) > 1]
    rows = []
    for job, over, m in jobs:
        row: dict[str, Any] = {"job": str(job.relative_to(root)) or "."}
        row.update({k: over.get(k) for k in varying})
        row.update({k: m.get(k) for k in metrics})
        rows.append(row)
    return rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric names")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir, tuple(m for m in args.metrics.split(",") if m))
    table = markdown(rows)
    print(table, end="")
    write_text(Path(args.sweep_dir) / "sweep.md", table)
    write_json(Path(args.sweep_dir) / "sweep.json", rows)
    return rows


if __name__ == "__main__":
    main()

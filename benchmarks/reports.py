"""Reports of a benchmark run: summary JSON/CSV, a Markdown table, PNG plots, W&B tables and images.

Every file is written atomically (`titans.io`), so an interrupted run never leaves a half-written summary.
Plots use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from titans.io import write_bytes, write_text


def fmt_length(n: int | str) -> str:
    """2048 -> '2K', 1536 -> '1536', 1048576 -> '1M'."""
    n = int(n)
    for unit, div in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def _cell(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown_table(table: Mapping[str, Mapping[int, float | None]], lengths: Sequence[int], row_name: str,
                   digits: int = 1) -> str:
    """A Markdown table: one row per key of `table`, one column per length (`2K`, `4K`, ...)."""
    head = f"| {row_name} | " + " | ".join(fmt_length(n) for n in lengths) + " |"
    sep = "|---|" + "---:|" * len(lengths)
    rows = [f"| {r} | " + " | ".join(_cell(vals.get(n), digits) for n in lengths) + " |" for r, vals in table.items()]
    return "\n".join([head, sep, *rows]) + "\n"


def wide_markdown_table(tables: Mapping[str, Mapping[str, Mapping[int, float | None]]], lengths: Sequence[int],
                        digits: int = 1) -> str:
    """One row per model, a column per (row, length): `{model: {row: {length: score}}}` -> the layout
    of the Titans paper's Table 2 (`| model | PK 2K | PK 4K | ... | W 16K |`)."""
    rows = list(dict.fromkeys(r for t in tables.values() for r in t))
    cols = [(r, n) for r in rows for n in lengths]
    head = "| model | " + " | ".join(f"{r} {fmt_length(n)}" for r, n in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    body = [f"| {m} | " + " | ".join(_cell(t.get(r, {}).get(n), digits) for r, n in cols) + " |"
            for m, t in tables.items()]
    return "\n".join([head, sep, *body]) + "\n"


def csv_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write dict rows as CSV (columns = union of keys in first-seen order), atomically."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in cols})
    return write_text(path, buf.getvalue())


def _save_fig(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def heatmap(table: Mapping[str, Mapping[int, float | None]], lengths: Sequence[int], path: str | Path, *,
            title: str, row_name: str, metric: str, vmin: float = 0.0, vmax: float = 100.0) -> Path:
    """A rows x lengths heatmap (red = 0, green = 100), each cell annotated with its value. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(table)
    grid = np.array([[np.nan if table[r].get(n) is None else table[r][n] for n in lengths] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * len(lengths), 1.0 + 0.45 * len(rows)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(lengths)), [fmt_length(n) for n in lengths])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(row_name)
    ax.set_title(title)
    for i in range(len(rows)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=metric)
    return _save_fig(fig, Path(path))


def lines(table: Mapping[str, Mapping[int, float | None]], lengths: Sequence[int], path: str | Path, *,
          title: str, metric: str, ylim: tuple[float, float] | None = (0, 100), log_x: bool = True) -> Path:
    """One curve per row of `table` over length. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r, vals in table.items():
        xs = [n for n in lengths if vals.get(n) is not None]
        ax.plot(xs, [vals[n] for n in xs], marker="o", label=str(r))
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [fmt_length(n) for n in lengths])
    ax.minorticks_off()
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_fig(fig, Path(path))


def log_wandb(run, summary: Mapping[str, Any], images: Sequence[str | Path], prefix: str) -> None:
    """Log a summary's cells as a `wandb.Table`, its table values as scalars and the PNGs as images.

    `run` is a `wandb` run (or a Lightning `WandbLogger`, whose `.experiment` is used); None is a no-op.
    """
    if run is None:
        return
    run = getattr(run, "experiment", run)
    import wandb

    cells = summary.get("cells") or []
    if cells:
        cols = list(cells[0])
        run.log({f"{prefix}/cells": wandb.Table(columns=cols, data=[[c.get(k) for k in cols] for c in cells])})
    scalars = {f"{prefix}/{row}/{n}": v for row, vals in (summary.get("table") or {}).items()
               for n, v in vals.items() if v is not None}
    if summary.get("effective_length") is not None:
        scalars[f"{prefix}/effective_length"] = summary["effective_length"]
    run.log({**scalars, **{f"{prefix}/{Path(p).stem}": wandb.Image(str(p)) for p in images}})

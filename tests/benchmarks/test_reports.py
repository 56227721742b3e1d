
import pytest

from benchmarks import reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TABLE = {"0": {1024: 100.0, 2048: 50.0}, "50": {1024: 0.0, 2048: None}}


def test_markdown_table_layout():
    md = reports.markdown_table(TABLE, [1024, 2048], "depth (%)")
    assert md.splitlines() == ["| depth (%) | 1K | 2K |", "|---|---:|---:|", "| 0 | 100.0 | 50.0 |", "| 50 | 0.0 | — |"]


@pytest.mark.parametrize("plot", ["heatmap", "lines"])
def test_plots_are_non_empty_pngs(tmp_path, plot):
    if plot == "heatmap":
        path = reports.heatmap(TABLE, [1024, 2048], tmp_path / "h.png", title="t", row_name="depth", metric="acc")
    else:
        path = reports.lines(TABLE, [1024, 2048], tmp_path / "l.png", title="t", metric="acc")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_csv_rows_union_of_columns(tmp_path):
    reports.csv_rows(tmp_path / "s.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert (tmp_path / "s.csv").read_text().splitlines() == ["a,b", "1,", "2,3"]


def test_log_wandb_logs_table_scalars_and_images(tmp_path):
    wandb = pytest.importorskip("wandb")
    png = reports.lines(TABLE, [1024, 2048], tmp_path / "niah.png", title="t", metric="acc")
    logged = {}

    class Run:
        def log(self, data):
            logged.update(data)

    summary = {"table": TABLE, "cells": [{"row": "0", "length": 1024, "score": 100.0}], "effective_length": 1024}
    reports.log_wandb(Run(), summary, [png], prefix="mag/niah")
    assert isinstance(logged["mag/niah/cells"], wandb.Table)
    assert isinstance(logged["mag/niah/niah"], wandb.Image)
    assert logged["mag/niah/0/2048"] == 50.0 and "mag/niah/50/2048" not in logged
    assert logged["mag/niah/effective_length"] == 1024
    reports.log_wandb(None, summary, [png], prefix="x")  # no logger: a no-op

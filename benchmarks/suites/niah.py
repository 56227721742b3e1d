"""`niah`: the needle-in-a-haystack depth x length grid (gkamradt/LLMTest_NeedleInAHaystack protocol).

gkamradt's test puts one needle at a given depth (percent of the context) of Paul Graham essays for
each context length of a grid, asks for it, and plots a depth x length heatmap. Differences here:
the needle is data_gen's (default: the `passkey` task with the essay haystack, "The pass key is
N. Remember it. N is the pass key."), placed at exactly each grid depth; scoring is exact substring
(the answer occurs in the greedy answer, case-insensitive) instead of an LLM judge; lengths are in
the model's own tokens. `task` / `task_params` / `depth_param` switch to another data_gen task that
takes a depth in [0, 1].
"""

from __future__ import annotations

from benchmarks.suites.base import Cell, Suite, substring_score


def make_cells(o: dict) -> list[Cell]:
    depths = o["depths"]
    if not depths or not all(isinstance(d, int | float) and 0 <= d <= 100 for d in depths):
        raise ValueError(f"benchmark.depths={depths!r} is not allowed; give a list of depth percents in [0, 100]")
    base = dict(o["task_params"] or {})
    cells = []
    for length in o["lengths"]:
        for d in sorted(set(depths)):
            params = dict(base, **{o["depth_param"]: d / 100})
            cells.append(Cell(o["task"], length, tuple(sorted(params.items())), row=f"{d:g}",
                              coords=(("depth", d),)))
    return cells


SUITE = Suite(
    name="niah",
    description="needle-in-a-haystack: depth (%) x length heatmap, substring scoring",
    defaults=dict(lengths=[1024, 2048, 4096], samples=5, depths=[0, 10, 25, 50, 75, 90, 100], task="passkey",
                  task_params={"haystack": "essay"}, depth_param="depth"),
    make_cells=make_cells,
    score=substring_score,
    layout="heatmap",
    row_name="depth (%)",
)

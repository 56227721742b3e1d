"""`babilong`: BABILong-style qa1-qa5 x length heatmap, scored with BABILong's label-set rule.

The samples are data_gen's BABILong-style tasks (a bAbI-like world simulator whose facts are spread
among essay sentences; not the published BABILong data). Scoring is booydar/babilong's
`compare_answers`: the first sentence of the answer must name the target and no other label of the
task's label set (labels that occur in the question are ignored).
"""

from __future__ import annotations

from benchmarks import scoring
from benchmarks.suites.base import Cell, Suite, check_choices

QA_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")


def task_name(qa: str) -> str:
    """data_gen's task name of a BABILong-style task ("qa1" -> "babilong_qa1")."""
    return f"babilong_{qa}"


def question_of(sample: dict) -> str:
    """The sample's question: `meta["question"]` when the generator records it, else the input's last line."""
    meta = sample.get("meta") or {}
    if meta.get("question"):
        return str(meta["question"])
    return sample["input"].rstrip().rsplit("\n", 1)[-1]


def score(prediction: str, sample: dict) -> float:
    qa = sample.get("meta", {}).get("qa") or sample["task"].removeprefix("babilong_")
    target = sample["answer"] if isinstance(sample["answer"], str) else sample["answer"][0]
    return float(scoring.babilong_correct(target, prediction, question_of(sample), scoring.babilong_labels(qa)))


def make_cells(o: dict) -> list[Cell]:
    tasks = check_choices("tasks", o["tasks"], QA_TASKS)
    return [Cell(task_name(t), length, row=t) for length in o["lengths"] for t in tasks]


SUITE = Suite(
    name="babilong",
    description="BABILong-style qa1-qa5 x length, BABILong label-set scoring",
    defaults=dict(lengths=[1024, 2048, 4096], samples=10, tasks=list(QA_TASKS)),
    make_cells=make_cells,
    score=score,
    layout="heatmap",
    row_name="task",
    stop=("\n",),
)

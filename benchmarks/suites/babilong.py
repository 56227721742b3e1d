"""`babilong`: BABILong-style qa1-qa5 x length heatmap, scored with BABILong's label-set rule.

The samples are data_gen's BABILong-style tasks (a bAbI-like world simulator whose facts are spread
among essay sentences; not the published BABILong data). Scoring is booydar/babilong's
`compare_answers`: the first sentence of the answer must name the target and no other label of the
task's label set (labels that occur in the question are ignored). The label set is BABILong's
(babilong/metrics.py) joined with the generator's own vocabulary for that answer kind (rooms for
qa1-qa4; actors and objects for qa5), since our simulator also uses names BABILong's qa5 set lacks
(John, Sandra, ...): with BABILong's set alone such an answer could never be scored right.
"""

from __future__ import annotations

from benchmarks import scoring
from benchmarks.suites.base import Cell, Suite, check_choices

QA_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")


def labels(qa: str) -> set[str]:
    """BABILong's label set of `qa` plus the generator's vocabulary for that answer kind."""
    from data_gen.babilong import ACTORS, OBJECTS, ROOMS

    own = (*ACTORS, *OBJECTS) if qa == "qa5" else ROOMS
    return set(scoring.babilong_labels(qa)) | set(own)


def question_of(sample: dict) -> str:
    """The sample's question: `meta["question"]` when the generator records it, else the input's last line."""
    meta = sample.get("meta") or {}
    if meta.get("question"):
        return str(meta["question"])
    return sample["input"].rstrip().rsplit("\n", 1)[-1]


def score(prediction: str, sample: dict) -> float:
    qa = sample["meta"]["qa"]
    target = sample["answer"] if isinstance(sample["answer"], str) else sample["answer"][0]
    return float(scoring.babilong_correct(target, prediction, question_of(sample), labels(qa)))


def make_cells(o: dict) -> list[Cell]:
    tasks = check_choices("tasks", o["tasks"], QA_TASKS)
    base = dict(o["task_params"] or {})
    return [Cell("babilong", length, tuple(sorted(dict(base, qa=t).items())), row=t) for length in o["lengths"]
            for t in tasks]


SUITE = Suite(
    name="babilong",
    description="BABILong-style qa1-qa5 x length, BABILong label-set scoring",
    defaults=dict(lengths=[1024, 2048, 4096], samples=10, tasks=list(QA_TASKS), task_params={}),
    make_cells=make_cells,
    score=score,
    layout="heatmap",
    row_name="task",
    stop=("\n",),
)

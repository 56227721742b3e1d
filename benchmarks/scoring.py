"""Scoring rules of the benchmarks, each the published protocol's own.

- RULER (NVIDIA/RULER, scripts/eval/synthetic/constants.py): a reference is found when it occurs in
  the prediction, case-insensitively. `string_match_all` averages, over samples, the fraction of a
  sample's references found; `string_match_part` takes, per sample, whether any reference is found.
  Both are percentages rounded to 2 decimals. RULER's niah_*, vt, cwe and fwe tasks use `all`,
  its qa tasks `part`. Predictions are cleaned first as RULER does (`postprocess_pred`: control
  characters become newlines, then strip).
- BABILong (booydar/babilong, babilong/metrics.py): the prediction's first sentence, lower-cased, is
  searched for the task's label set; labels that occur in the question never count; the sample is
  right when the target is the only label left.
- NIAH / passkey / hash-hop: the gkamradt needle test scores with an LLM judge; here the answer must
  occur in the prediction (case-insensitive substring), which is RULER's rule for one reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")

# BABILong's label sets (babilong/metrics.py TASK_LABELS) for the tasks this project generates.
BABILONG_LABELS: dict[str, tuple[str, ...]] = {
    "qa1": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa2": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa3": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa4": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa5": ("Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"),
}


def postprocess_pred(prediction: str) -> str:
    """RULER's clean-up of a raw prediction: control characters -> newline, then strip."""
    return _CONTROL.sub("\n", prediction).strip()


def _refs(refs: str | Iterable[str]) -> list[str]:
    out = [refs] if isinstance(refs, str) else [str(r) for r in refs]
    if not out:
        raise ValueError("refs: a sample has an empty reference list; every sample needs at least one reference")
    return out


def _check_batch(preds: Sequence[str], refs: Sequence) -> None:
    if isinstance(preds, str):
        raise TypeError("preds must be a list of predictions (one str per sample), got a single str; wrap it: [pred]")
    if len(preds) != len(refs):
        raise ValueError(f"preds and refs must have one entry per sample, got {len(preds)} preds and {len(refs)} refs")
    if not preds:
        raise ValueError("preds is empty; score at least one sample")


def match_fraction(prediction: str, refs: str | Iterable[str]) -> float:
    """Fraction (0..1) of `refs` that occur in `prediction`, case-insensitively (one RULER `all` term)."""
    refs = _refs(refs)
    low = prediction.lower()
    return sum(1.0 for r in refs if r.lower() in low) / len(refs)


def match_any(prediction: str, refs: str | Iterable[str]) -> float:
    """1.0 when any of `refs` occurs in `prediction`, case-insensitively (one RULER `part` term)."""
    low = prediction.lower()
    return max(1.0 if r.lower() in low else 0.0 for r in _refs(refs))


def string_match_all(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> float:
    """RULER `string_match_all`: mean over samples of the fraction of references found, x100, 2 decimals.

    `preds[i]` is sample i's prediction, `refs[i]` its reference list (a str counts as one reference).
    """
    _check_batch(preds, refs)
    return round(sum(match_fraction(p, r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> float:
    """RULER `string_match_part`: share of samples where any reference is found, x100, 2 decimals."""
    _check_batch(preds, refs)
    return round(sum(match_any(p, r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def babilong_preprocess(prediction: str) -> str:
    """BABILong's `preprocess_output`: lower-case, first sentence, cut at an echoed context/example/question."""
    out = prediction.lower().split(".")[0]
    for marker in ("<context>", "<example>", "question"):
        out = out.split(marker)[0]
    return out


def babilong_correct(target: str, prediction: str, question: str, labels: Iterable[str]) -> bool:
    """BABILong's `compare_answers`: right when `target` is the only label of `labels` in the prediction,
    after dropping labels that occur in `question` (mentions in the question are never targets)."""
    out = babilong_preprocess(prediction)
    labels = {label.lower() for label in labels}
    in_question = {label for label in labels if label in question.lower()}
    in_output = {label for label in labels if label in out} - in_question
    return in_output == {target.lower()}


def babilong_labels(task: str) -> tuple[str, ...]:
    """The label set of a BABILong task ("qa1".."qa5"); ValueError for another name."""
    if task not in BABILONG_LABELS:
        raise ValueError(f"babilong task {task!r} has no label set; allowed: {sorted(BABILONG_LABELS)}")
    return BABILONG_LABELS[task]


def first_word_match(prediction: str, refs: str | Iterable[str]) -> float:
    """1.0 when the prediction's first word (letters/digits) equals one of `refs`, case-insensitively.

    For yes/no answers, where a substring rule would credit "yes no".
    """
    m = re.search(r"[A-Za-z0-9_]+", prediction)
    return 1.0 if m and m.group(0).lower() in {r.lower() for r in _refs(refs)} else 0.0


def effective_length(scores_by_length: dict[int, float], threshold: float = 85.6) -> int | None:
    """RULER's effective length: the largest length L such that the score at L and at every shorter
    evaluated length is at least `threshold` (RULER's default 85.6 is Llama-2-7B's 4K score).
    None when the shortest length already falls below it."""
    best = None
    for length in sorted(scores_by_length):
        if scores_by_length[length] < threshold:
            break
        best = length
    return best

"""The task registry: name -> generator, default parameters, task-specific check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from data_gen.common import Counter, check_params, check_range, sample_rng
from data_gen.validate import validate

MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class TaskSpec:
    """One task. `fn(rng, length, counter, params) -> sample`; `check(sample, params) -> problems`."""

    name: str
    fn: Callable
    defaults: dict
    check: Callable | None = None
    family: str = ""
    description: str = ""
    validate_params: Callable | None = field(default=None, repr=False)


TASKS: dict[str, TaskSpec] = {}


def register(name: str, defaults: dict, family: str, description: str, check=None, validate_params=None):
    def deco(fn):
        TASKS[name] = TaskSpec(name, fn, dict(defaults), check, family, description, validate_params)
        return fn

    return deco


def get_task(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {sorted(TASKS)}")
    return TASKS[task]


def resolve_params(task: str, params: dict) -> dict:
    spec = get_task(task)
    merged = check_params(task, params, spec.defaults)
    if spec.validate_params is not None:
        spec.validate_params(merged)
    return merged


def generate_one(task: str, index: int, length: int, seed: int, counter: Counter, params: dict,
                 split: str = "train") -> dict:
    """Sample `index` of (task, seed, split): deterministic, validated; a sample that fails its own
    validation (e.g. a random number that happens to occur in the essay) is redrawn from the next
    attempt's seed, up to MAX_ATTEMPTS."""
    spec = get_task(task)
    check_range("length", length, 1)
    problems: list[str] = []
    for attempt in range(MAX_ATTEMPTS):
        rng = sample_rng(task, split, seed, index, attempt)
        sample = spec.fn(rng, int(length), counter, params)
        problems = validate(sample, counter, params, spec.check)
        if not problems:
            sample["meta"].update(index=index, seed=seed, split=split, attempt=attempt)
            return sample
    raise RuntimeError(f"{task}: sample {index} (seed {seed}) failed validation {MAX_ATTEMPTS} times: {problems}")

"""What every speed benchmark records about the machine it ran on (`"machine"` in its JSON).

Timings on a shared CPU move with the other jobs, so the record carries the load average at the start and at
the end of the run (measured, not assumed) beside the user's `--note`.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from titans.memory.malloc import keep_freed_memory


def add_note_argument(parser: argparse.ArgumentParser) -> None:
    """`--note TEXT`: the user's word on the run (e.g. what else ran), stored as machine.note."""
    parser.add_argument("--note", default=None,
                        help="machine.note in the JSON (what else ran; the load average is recorded anyway)")


def add_malloc_argument(parser: argparse.ArgumentParser) -> None:
    """`--malloc keep|default`: glibc keeps freed memory for reuse (as `train.py` and `evaluate.py` set it,
    `titans.memory.malloc`), or glibc's default (freed blocks go back to the system; the next tensor faults its
    pages in afresh). Recorded as machine.malloc."""
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep (default): glibc keeps freed memory, as train.py / evaluate.py set it; "
                             "default: glibc's own behaviour")


def apply_malloc(choice: str) -> str:
    """Sets `--malloc` for this process; returns what holds ("default" where the C library is not glibc)."""
    return "keep" if choice == "keep" and keep_freed_memory() else "default"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, or None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(threads: int, note: str | None, load_at_start: list[float] | None, **extra) -> dict:
    """The `"machine"` record: threads, CPUs, torch, platform, load averages at start and end, the note."""
    return {"torch_threads": threads, "cpus": os.cpu_count(), "torch": torch.__version__,
            "platform": platform.platform(), **extra,
            "load_average_start": load_at_start, "load_average_end": load_average(), "note": note}

"""What a benchmark run records per sample, and how a rerun finds the samples it may reuse.

Each finished sample is one line of `samples.jsonl` carrying a `fingerprint`: the model name, a hash of its
weights and the settings that change answers (seed, segment_len, max_new_tokens, stop strings). A rerun into
the same folder reuses exactly the records with its own fingerprint. Before appending, a writer calls
`repair_torn_tail`, so a line torn by a killed run never swallows the next record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"


def weights_fingerprint(model) -> str:
    """A short hash of the model's parameters (names, shapes and up to 4,096 evenly spaced values of each), so a
    resumed run never reuses answers of other weights — e.g. the same model name after more training."""
    import hashlib

    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(flat[::step].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(model_name: str, seed: int, segment_len: int, max_new_tokens: int | None, stop,
                weights: str | None = None) -> dict:
    """The settings a generation record was made with; resume reuses a record only when they all match."""
    return {"model": model_name, "weights": weights, "seed": seed, "segment_len": segment_len,
            "max_new_tokens": max_new_tokens, "stop": list(stop)}


def read_records(path: str | Path, fingerprint: Mapping[str, Any] | None = None) -> list[dict]:
    """Records of a samples JSONL, keeping those made with `fingerprint` (all when None).

    A truncated last line (a run killed mid-write) is skipped with a warning.
    """
    path = Path(path)
    if not path.exists():
        return []
    out, other = [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d is not valid JSON (an interrupted write?); skipped", path, n)
            continue
        if fingerprint is not None and rec.get("fingerprint") != dict(fingerprint):
            other += 1
            continue
        out.append(rec)
    if other:
        log.warning("%s: %d record(s) made with other settings (model/weights/seed/segment_len/max_new_tokens/stop) "
                    "are ignored; use another output_dir to keep runs apart", path, other)
    return out


def repair_torn_tail(path: str | Path) -> bool:
    """Make `path` end at a line boundary before appending to it, so the next record starts on a line of its own.

    A run killed mid-write leaves a last line without its newline; appending after it would glue the next record
    onto the fragment and lose both. A torn fragment that is not valid JSON is cut off (it is an unfinished record
    of ours; its sample is recomputed); a complete record that only lacks the newline gets one. Returns whether the
    file was changed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(-1, 2)
        if f.read(1) == b"\n":
            return False
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1  # 0 when the torn record is the only line
        tail = data[cut:]
        try:
            json.loads(tail.decode("utf-8"))
            complete = True
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if complete:
            f.seek(0, 2)
            f.write(b"\n")
        else:
            log.warning("%s: the last line is an unfinished record (%d bytes, a run killed mid-write?); removed, its "
                        "sample will be recomputed", path, len(tail))
            f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return True

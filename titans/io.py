"""Atomic file writes, the one way every layer writes a file: a reader sees the old file or the new one, never
half of one, and an interrupted write leaves nothing behind.

    write_text(path, text)          write_bytes(path, data)          write_json(path, obj)
    with atomic_path(path) as tmp:  # for libraries that write to a path themselves (safetensors, torch.save)
        save_file(tensors, str(tmp))

Each writes a temporary file beside `path` (same folder, so `os.replace` is atomic; the same suffix, so
libraries that pick a format from it still do), flushes it to disk and renames it over `path`. Standard
library only: this module sits below every other one, `titans.memory` included.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it becomes `path` (fsync +
    `os.replace`), otherwise it is removed and `path` is untouched. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; what we write is meant to be read by others
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path` as a Path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Write `obj` as indented JSON (and a final newline) to `path` atomically; values JSON does not know are
    written as `str(value)`."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")

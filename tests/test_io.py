"""titans.io: the one atomic write every layer uses."""

import json
import os

import pytest

from titans.io import atomic_path, write_bytes, write_json, write_text


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"b": 1, "a": [1, 2]} and target.read_text().endswith("\n")
    write_json(target, {"b": 2, "a": 0}, sort_keys=True)
    assert target.read_text().index('"a"') < target.read_text().index('"b"')
    write_text(tmp_path / "t.md", "é")
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "t.md").read_bytes() == "é".encode() and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.bin", "sub", "summary.json", "t.md"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"a": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_json(target, {"a": Boom()})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["summary.json"]


def test_atomic_path_keeps_the_suffix_for_libraries_that_read_it(tmp_path):
    with atomic_path(tmp_path / "curves.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != tmp_path / "curves.png"
        tmp.write_bytes(b"png")
    assert (tmp_path / "curves.png").read_bytes() == b"png"

"""CLI: writes a dataset + manifest atomically; same arguments, same bytes; clear errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_gen import io
from data_gen.__main__ import main


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_twice_identical_bytes(tmp_path):
    args = ["task=hashhop", "n=12", "length=512", "seed=3", "hops=2", "haystack=pairs"]
    assert main(args + [f"out={tmp_path / 'a'}"]) == 0
    assert main(args + [f"out={tmp_path / 'b'}"]) == 0
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert ha == hb and "data/data-00000-of-00001.arrow" in ha
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["task"] == "hashhop" and manifest["params"]["hops"] == 2 and manifest["n"] == 12
    assert manifest["sha256"] == ha["data/data-00000-of-00001.arrow"]
    assert manifest["versions"]["datasets"]
    samples = io.load(tmp_path / "a")
    import data_gen

    assert samples == data_gen.generate("hashhop", 12, 512, seed=3, hops=2, haystack="pairs")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_cli_errors(tmp_path):
    with pytest.raises(ValueError, match="already exists"):
        (tmp_path / "x").mkdir()
        main(["task=passkey", "n=1", f"out={tmp_path / 'x'}"])
    with pytest.raises(ValueError, match="task= is required"):
        main([f"out={tmp_path / 'y'}"])
    with pytest.raises(ValueError, match="key=value"):
        main(["task", f"out={tmp_path / 'y'}"])
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="cannot create the parent directory"):
        main(["task=passkey", "n=1", f"out={tmp_path / 'file' / 'out'}"])


def test_cli_subprocess_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_gen", "task=nope", f"out={tmp_path / 'z'}"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown task 'nope'" in r.stderr

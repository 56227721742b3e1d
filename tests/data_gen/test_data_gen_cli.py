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


ARGS = ["task=passkey", "n=2", "length=300", "seed=0"]


def test_overwrite_refuses_a_directory_data_gen_did_not_write(tmp_path):
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "train.py").write_text("print('hello')\n")
    before = _hashes(project)
    with pytest.raises(ValueError, match=f"{project}.*not a data_gen dataset.*Nothing was deleted"):
        main(ARGS + [f"out={project}", "overwrite=true"])
    assert _hashes(project) == before
    # a file in place of the directory
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ValueError, match="is not a directory"):
        main(ARGS + [f"out={tmp_path / 'file'}", "overwrite=true"])
    assert (tmp_path / "file").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("extra", ["notes.txt", "data/extra.arrow", "sub/dir/x"], ids=["top", "in-data", "nested"])
def test_overwrite_refuses_our_dataset_with_a_file_added(tmp_path, extra):
    out = tmp_path / "ds"
    assert main(ARGS + [f"out={out}"]) == 0
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("a user's file")
    with pytest.raises(ValueError, match=f"{out}.*did not write.*{extra.split('/')[0]}"):
        main(ARGS + [f"out={out}", "overwrite=true"])
    assert (out / extra).read_text() == "a user's file"


def test_overwrite_replaces_our_own_dataset_and_an_empty_directory(tmp_path):
    out = tmp_path / "ds"
    assert main(ARGS + [f"out={out}"]) == 0
    assert main(["task=passkey", "n=3", "length=300", "seed=1", f"out={out}", "overwrite=true"]) == 0
    assert json.loads((out / "manifest.json").read_text())["n"] == 3
    (tmp_path / "empty").mkdir()
    assert main(ARGS + [f"out={tmp_path / 'empty'}", "overwrite=true"]) == 0
    assert len(io.load(tmp_path / "empty")) == 2


@pytest.mark.parametrize("arg, match", [
    ("n=0", r"n=0 is not allowed; it must be an integer >= 1"),
    ("n=-3", r"n=-3 is not allowed"),
    ("length=0", r"length=0 is not allowed"),
    ("seed=1.5", r"seed=1.5 is not allowed"),
    ("overwrite=maybe", r"overwrite='maybe' is not allowed; allowed: true or false"),
    ("split=test", r"split='test' is not allowed"),
    ("digits=1.5", r"digits=1.5 is not allowed"),
    ("digits=[9,3]", r"digits=\[9, 3\] is not allowed; a range \[low, high\] needs low <= high"),
    ("haystack=sand", r"haystack='sand' is not allowed"),
    ("length=40", r"length too small for passkey"),
], ids=["n0", "n-negative", "length0", "seed-float", "overwrite-word", "split", "digits-float", "digits-range",
        "haystack", "length-small"])
def test_bad_arguments_fail_at_the_start(tmp_path, arg, match):
    out = tmp_path / "new" / "ds"
    args = [a for a in ARGS if a.split("=")[0] != arg.split("=")[0]] + [arg, f"out={out}"]
    with pytest.raises(ValueError, match=match):
        main(args)
    assert not out.exists()


def test_n0_subprocess_is_a_clear_error_not_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_gen", "task=passkey", "n=0", f"out={tmp_path / 'z'}"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "n=0 is not allowed" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "z").exists()


def _edit_first_passkey(path: Path) -> Path:
    """Change one pass key inside the arrow file (same length: the file stays a valid dataset)."""
    arrow = path / "data" / io.DATA_FILE
    blob = arrow.read_bytes()
    key = io.load(path)[0]["answer"]
    new = str((int(key[0]) % 9) + 1) + key[1:]
    assert new != key and blob.count(key.encode()) >= 1
    arrow.write_bytes(blob.replace(key.encode(), new.encode()))
    return arrow


def test_load_verifies_the_manifest_sha256(tmp_path):
    out = tmp_path / "ds"
    assert main(ARGS + [f"out={out}"]) == 0
    assert len(io.load(out)) == 2
    arrow = _edit_first_passkey(out)
    import datasets

    assert len(datasets.load_from_disk(str(out / "data"))) == 2  # still a readable dataset: only the hash tells
    with pytest.raises(ValueError, match=f"{arrow}.*does not match the sha256"):
        io.load(out)
    # training loads it through the same check
    from titans.tokenizers import byte_tokenizer
    from titans.training.data import DataConfig, TitansDataModule

    with pytest.raises(ValueError, match=f"data.train.path.*{arrow}.*does not match"):
        TitansDataModule(DataConfig(train={"path": str(out)}, seq_len=512), byte_tokenizer())


def test_load_refuses_an_edited_manifest_or_a_missing_file(tmp_path):
    out = tmp_path / "ds"
    assert main(ARGS + [f"out={out}"]) == 0
    state = out / "data" / "state.json"
    state.unlink()
    with pytest.raises(ValueError, match=f"{state}.*is missing"):
        io.load(out)
    assert main(ARGS + [f"out={out}", "overwrite=true"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest.json.*sha256 and files disagree"):
        io.load(out)

"""Writing and reading generated datasets: a HF `datasets` dataset plus manifest.json, atomically.

On disk every column has one type for all tasks: `answer` is always a list of strings
(`answer_is_list` says whether `generate` returned a list) and `meta` is a JSON string.
`load(path)` checks every file against the manifest's sha256 and gives the samples back exactly as
`generate` returned them.

`overwrite=True` replaces only a directory this module wrote (its manifest.json and the files the
manifest lists, nothing else) or an empty one; any other directory is refused, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

DATA_FILE = "data-00000-of-00001.arrow"
PACKAGES = ("titans", "datasets", "pyarrow", "transformers", "tokenizers", "wonderwords", "numpy", "torch")


def _versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}  # the code haystack is this Python's standard library
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_rows(samples: list[dict]) -> dict[str, list]:
    return {
        "input": [s["input"] for s in samples],
        "answer": [list(s["answer"]) if isinstance(s["answer"], list) else [s["answer"]] for s in samples],
        "answer_is_list": [isinstance(s["answer"], list) for s in samples],
        "task": [s["task"] for s in samples],
        "length": [int(s["length"]) for s in samples],
        "meta": [json.dumps(s["meta"], sort_keys=True, ensure_ascii=False) for s in samples],
    }


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(manifest, dict) and manifest.get("format") == "datasets"
          and isinstance(manifest.get("files"), dict) and isinstance(manifest.get("sha256"), str))
    return manifest if ok else None


def foreign_entries(path: Path) -> list[str] | None:
    """What in directory `path` this module did not write: None when it is not a data_gen dataset at all
    (no valid manifest.json), else the entries beyond manifest.json and the manifest's files (empty: ours)."""
    manifest = _read_manifest(path)
    if manifest is None:
        return None
    ours = {"manifest.json", *manifest["files"]}
    ours_dirs = {str(Path(f).parent) for f in manifest["files"]} - {"."}
    extra = []
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink() or (p.is_dir() and rel not in ours_dirs) or (not p.is_dir() and rel not in ours):
            extra.append(rel)
    return extra


def check_replaceable(out: Path) -> None:
    """ValueError unless `out` may be replaced: an empty directory, or a dataset this module wrote with
    nothing added to it. Whatever else it is (a source tree, a home directory), it is never deleted."""
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"out={str(out)!r} exists and is not a directory; overwrite=true only replaces a dataset "
                         f"directory written by data_gen. Choose another out=")
    if not any(out.iterdir()):
        return
    extra = foreign_entries(out)
    if extra is None:
        raise ValueError(f"out={str(out)!r} is not a data_gen dataset (no valid manifest.json); overwrite=true "
                         f"only replaces a directory data_gen wrote. Nothing was deleted; choose another out=")
    if extra:
        raise ValueError(f"out={str(out)!r} holds files data_gen did not write ({extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}); overwrite=true refuses to delete them. Nothing was "
                         f"deleted; move them away or choose another out=")


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """The output directory, or a ValueError saying why it cannot be written."""
    if not out:
        raise ValueError("out= is required: the directory to write the dataset to (it must not exist "
                         "unless overwrite=true)")
    out = Path(out).expanduser().absolute()
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ValueError(f"out={str(out)!r} already exists; pass overwrite=true (only a dataset written by data_gen "
                         f"is replaced) or choose a new directory")
    if out.exists() or out.is_symlink():
        check_replaceable(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out={str(out)!r}: cannot create the parent directory ({e.strerror})") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"out={str(out)!r}: the parent directory {str(parent)!r} is not writable")
    return out


def write(samples: list[dict], out: str | os.PathLike, manifest: dict, overwrite: bool = False) -> Path:
    """Write `samples` to `out` (temp dir then rename); returns the directory. Same samples, same bytes."""
    import datasets

    if not samples:
        raise ValueError("no samples to write; n must be >= 1")
    out = check_out_dir(out, overwrite)
    datasets.disable_progress_bars()  # the CLI shows its own
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        features = datasets.Features({
            "input": datasets.Value("string"),
            "answer": datasets.Sequence(datasets.Value("string")),
            "answer_is_list": datasets.Value("bool"),
            "task": datasets.Value("string"),
            "length": datasets.Value("int64"),
            "meta": datasets.Value("string"),
        })
        ds = datasets.Dataset.from_dict(to_rows(samples), features=features)
        data_dir = tmp / "data"
        ds.save_to_disk(str(data_dir), max_shard_size="100GB")
        # datasets writes a random fingerprint into state.json: pin it to the content hash.
        digest = _sha256(data_dir / DATA_FILE)
        state_path = data_dir / "state.json"
        state = json.loads(state_path.read_text())
        state["_fingerprint"] = digest[:16]
        state_path.write_text(json.dumps(state, indent=2, sort_keys=True))
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(data_dir.rglob("*")) if p.is_file()}
        full = dict(manifest, n=len(samples), sha256=digest, files=files, versions=_versions(), format="datasets")
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists() or out.is_symlink():
            check_replaceable(out)  # again: it may have changed while the samples were generated
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def verify(path: str | os.PathLike) -> dict:
    """The manifest of dataset `path` after checking every file it lists against its sha256; a ValueError
    naming the first file that is missing or differs (an edited or truncated dataset never loads silently)."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{str(path)!r} is not a data_gen dataset (no manifest.json)")
    manifest = _read_manifest(path)
    if manifest is None:
        raise ValueError(f"{str(path / 'manifest.json')!r} is not a valid data_gen manifest (edited or from another "
                         f"tool); regenerate the dataset with `python -m data_gen ... out={path} overwrite=true`")
    files = dict(manifest["files"])
    if f"data/{DATA_FILE}" not in files or files[f"data/{DATA_FILE}"] != manifest["sha256"]:
        raise ValueError(f"{str(path / 'manifest.json')!r}: sha256 and files disagree about data/{DATA_FILE}; "
                         f"the manifest was edited; regenerate the dataset")
    for rel, digest in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise ValueError(f"{str(f)!r} is missing (listed in {str(path / 'manifest.json')!r}); regenerate the "
                             f"dataset")
        if _sha256(f) != digest:
            raise ValueError(f"{str(f)!r} does not match the sha256 in {str(path / 'manifest.json')!r}: the dataset "
                             f"was edited or is corrupt; regenerate it with `python -m data_gen ... out={path} "
                             f"overwrite=true`")
    return manifest


def load(path: str | os.PathLike) -> list[dict]:
    """Samples of a directory written by `write`, as `generate` returned them, after `verify(path)`."""
    import datasets

    path = Path(path)
    verify(path)
    ds = datasets.load_from_disk(str(path / "data"))
    return [
        {"input": r["input"], "answer": r["answer"] if r["answer_is_list"] else r["answer"][0], "task": r["task"],
         "length": r["length"], "meta": json.loads(r["meta"])}
        for r in ds
    ]

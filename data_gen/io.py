"""Writing and reading generated datasets: a HF `datasets` dataset plus manifest.json, atomically.

On disk every column has one type for all tasks: `answer` is always a list of strings
(`answer_is_list` says whether `generate` returned a list) and `meta` is a JSON string.
`load(path)` gives the samples back exactly as `generate` returned them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

DATA_FILE = "data-00000-of-00001.arrow"
PACKAGES = ("titans", "datasets", "pyarrow", "transformers", "tokenizers", "wonderwords", "numpy", "torch")


def _versions() -> dict[str, str | None]:
    out = {}
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


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """The output directory, or a ValueError saying why it cannot be written."""
    if not out:
        raise ValueError("out= is required: the directory to write the dataset to (it must not exist "
                         "unless overwrite=true)")
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ValueError(f"out={str(out)!r} already exists; pass overwrite=true or choose a new directory")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} exists and is not a directory")
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
        if out.exists():
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


def load(path: str | os.PathLike) -> list[dict]:
    """Samples of a directory written by `write`, as `generate` returned them."""
    import datasets

    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{str(path)!r} is not a data_gen dataset (no manifest.json)")
    ds = datasets.load_from_disk(str(path / "data"))
    return [
        {"input": r["input"], "answer": r["answer"] if r["answer_is_list"] else r["answer"][0], "task": r["task"],
         "length": r["length"], "meta": json.loads(r["meta"])}
        for r in ds
    ]

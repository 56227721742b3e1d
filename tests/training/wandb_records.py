"""Read back what an offline W&B run wrote (its `run-*.wandb` file), for the tests: wandb 0.31 has no Python
reader of its own, so the records are read with `titans.training.loggers._wandb_payloads` (which the trainer uses
to wait for a run's exit record) and decoded with wandb's protobuf classes."""

from __future__ import annotations

from pathlib import Path

from titans.training.loggers import _wandb_payloads


def read_wandb_run(run_dir: str | Path) -> dict:
    """What a (typically offline) W&B run logged, read back from its `run-*.wandb` file.

    Returns {"config": {key: value}, "history": [{metric: value, ...} per logged step],
    "summary": {metric: value}, "run_id": str}. Values are JSON-decoded.
    """
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise ValueError(f"no run-*.wandb file in {run_dir}; pass a wandb/offline-run-* (or run-*) directory.")
    out: dict = {"config": {}, "history": [], "summary": {}, "run_id": None}
    for payload in _wandb_payloads(files[0]):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"] = rec.run.run_id
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                                   for item in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out

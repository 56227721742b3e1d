"""Logger factories. `wandb_logger(mode="auto")` never hangs: offline without an API key or network;
`tensorboard_logger` says which package to install when neither tensorboardX nor tensorboard is there."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path

from titans.io import write_text

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")
WANDB_HOST = "api.wandb.ai"


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """'auto' -> $WANDB_MODE if set, else 'online' when an API key exists and api.wandb.ai answers
    within 3 s, else 'offline'. Other modes are returned as given."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is not allowed; allowed: {WANDB_MODES}.")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    if not _has_wandb_key():
        log.info("wandb: no API key found, logging offline (sync later with `wandb sync`)")
        return "offline"
    if not _reachable(WANDB_HOST):
        log.warning("wandb: %s not reachable, logging offline (sync later with `wandb sync`)", WANDB_HOST)
        return "offline"
    return "online"


def wandb_logger(project: str = "titans", save_dir: str = ".", mode: str = "auto", name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, **kwargs):
    """A Lightning `WandbLogger` whose run files go to `save_dir/wandb/`; `mode` as in `resolve_wandb_mode`."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    settings = kwargs.pop("settings", None) or wandb.Settings(init_timeout=60, silent=True, console="off",
                                                              x_disable_stats=True)
    return WandbLogger(project=project, save_dir=str(save_dir), mode=mode, name=name, group=group,
                       tags=list(tags or []), settings=settings, **kwargs)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def tensorboard_logger(save_dir: str = ".", name: str = "tensorboard", version: str | int | None = "", **kwargs):
    """A Lightning `TensorBoardLogger` writing with tensorboardX (a titans dependency) or tensorboard; a clear
    error naming the package and the alternatives when neither is installed (Lightning's would not)."""
    if not (_importable("tensorboardX") or _importable("tensorboard")):
        raise ModuleNotFoundError(
            "logger=tensorboard needs the tensorboardX package (a dependency of titans in pyproject.toml; "
            "`pip install -e .` or `pip install 'tensorboardX>=2.6'`) or the full tensorboard package; "
            "or pick another logger: logger=csv | wandb | none."
        )
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(save_dir), name=name, version=version, **kwargs)


def csv_logger(save_dir: str = ".", name: str = "csv", version: str | int | None = "", **kwargs):
    """Lightning's `CSVLogger`, except that it never deletes a metrics.csv it finds: a resumed run continues
    the file (`continue_log()`: the rows the interrupted run logged after its checkpoint are dropped), a new
    run in the same directory starts it over (`drop_from(0)`)."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.utilities import rank_zero_only

    class AppendingWriter(ExperimentWriter):
        # diff with ExperimentWriter: an existing metrics.csv is kept and its columns carried on
        def _check_log_dir_exists(self) -> None:
            if os.path.isfile(self.metrics_file_path):
                import csv

                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = sorted(next(csv.reader(f), []))

    class ResumableCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

        resuming = False

        @rank_zero_only  # one process rewrites the file (DDP: the other ranks never write it)
        def drop_from(self, step: int) -> None:
            """Keep only the rows logged at steps before `step` (0: start the file over)."""
            drop_csv_rows(Path(self.log_dir) / "metrics.csv", step)
            self._experiment = None

        def continue_log(self) -> None:
            """A resumed run: its first logged step is where the log continues; the rows an interrupted run
            logged from that step on (after its checkpoint) are dropped then, before the new rows go in."""
            self.resuming = True

        @rank_zero_only
        def log_metrics(self, metrics, step=None) -> None:
            if self.resuming and step is not None:
                self.resuming = False
                self.save()  # nothing pending is lost
                self.drop_from(step)
            super().log_metrics(metrics, step)

    return ResumableCSVLogger(save_dir=str(save_dir), name=name, version=version, **kwargs)


def drop_csv_rows(path: Path, step: int) -> None:
    """Rewrite the CSV at `path` (atomically) without its rows whose `step` is >= `step`; 0 removes the file."""
    import csv
    import io

    if not path.is_file():
        return
    if step <= 0:
        path.unlink()
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step") in (None, "") or int(float(r["step"])) < step]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


def tidy_logging() -> None:
    """Each log line once, no vendor tips: Lightning prints through its own console handler and also hands
    every record on to the root logger, which Hydra gives a console (and a file) handler, so each line
    appeared twice. With root handlers in place, Lightning's own console handler goes and its records
    reach the console once (and the job's log file). Lightning's litlogger/litmodels tips are dropped."""
    lightning_log = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for h in list(lightning_log.handlers):
            if type(h) is logging.StreamHandler:
                lightning_log.removeHandler(h)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


_WANDB_BLOCK = 32768
_WANDB_FILE_HEADER = 7  # ":W&B", magic 0xBEE1, version (struct "<4sHB")
_WANDB_RECORD_HEADER = 7  # crc32, length, type (struct "<IHB"); types FULL=1 FIRST=2 MIDDLE=3 LAST=4


def _wandb_payloads(path: Path):
    """Raw record payloads of a `.wandb` transaction log (LevelDB log format, 32 KiB blocks)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no ':W&B' header).")
    pos, parts = _WANDB_FILE_HEADER, []
    while pos + _WANDB_RECORD_HEADER <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < _WANDB_RECORD_HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        pos += _WANDB_RECORD_HEADER
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left - _WANDB_RECORD_HEADER
            continue
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            yield b"".join(parts)
            parts = []


def wait_for_wandb_exit(run_dir: str | Path, timeout: float = 15.0) -> bool:
    """Wait until the run file in `run_dir` holds its final `exit` record (W&B's service process may still be
    flushing it after `finish()` returns). True when complete, False after `timeout` seconds."""
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        for path in Path(run_dir).glob("run-*.wandb"):
            try:
                for payload in _wandb_payloads(path):
                    rec = pb.Record()
                    rec.ParseFromString(payload)
                    if rec.WhichOneof("record_type") == "exit":
                        return True
            except Exception:  # noqa: BLE001 - a half-written file: try again
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)

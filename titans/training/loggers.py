"""Logger factories. `wandb_logger(mode="auto")` never hangs: offline without an API key or network."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path

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

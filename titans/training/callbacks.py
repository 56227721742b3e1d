"""Callbacks: tokens/s (progress bar + loggers) and per-layer memory diagnostics with stuck-gate warnings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class ThroughputCallback(pl.Callback):
    """Logs `train/tokens_per_s` (shown in the progress bar) and `train/tokens` (cumulative, this rank)."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self.tokens = 0
        self.history: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        dt = max(time.perf_counter() - self._t0, 1e-9)
        n = int(batch["input_ids"].numel())
        self.tokens += n
        self.history.append(n / dt)
        pl_module.log("train/tokens_per_s", n / dt, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        pl_module.log("train/tokens", float(self.tokens), batch_size=batch["input_ids"].shape[0])

    def state_dict(self) -> dict:
        return {"tokens": self.tokens}  # a resumed run counts on from here

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = int(state_dict.get("tokens", 0))


def default_collector(pl_module) -> dict[str, float]:
    """The memory diagnostics the module computed on its last recorded batch, as floats (one host sync)."""
    from titans.patch import collect_diagnostics

    return collect_diagnostics(getattr(pl_module, "last_diagnostics", {}))


class DiagnosticsCallback(pl.Callback):
    """Every `every_n_steps` optimizer steps, logs `diag/<name>` for each float of the memory diagnostics
    (`titans.patch.memory_diagnostics`: per-layer gate, surprise, θ/η/α, memory norm); warns once per name when
    a gate's mean is below `gate_low` or above `gate_high` (stuck closed / open) and logs `diag/stuck_gates`.
    It sets `pl_module.record_diagnostics` on the batches whose end may log, so the module asks the memory for
    its aux only then and keeps the scalars in `pl_module.last_diagnostics`.

    collector: LightningModule -> {name: float}; default `default_collector` (the module's last diagnostics).
    """

    def __init__(self, every_n_steps: int = 10, gate_low: float = 0.01, gate_high: float = 0.99,
                 collector: Callable | None = None) -> None:
        if every_n_steps <= 0 or not 0.0 <= gate_low < gate_high <= 1.0:
            raise ValueError(f"DiagnosticsCallback: every_n_steps={every_n_steps!r} must be > 0 and 0 <= "
                             f"gate_low={gate_low!r} < gate_high={gate_high!r} <= 1.")
        self.every_n_steps, self.gate_low, self.gate_high = every_n_steps, gate_low, gate_high
        self.collector = collector
        self.warned: set[str] = set()
        self.last: dict[str, float] = {}

    def collect(self, pl_module) -> dict[str, float]:
        fn = self.collector or default_collector
        return {str(k): float(v) for k, v in fn(pl_module).items()}

    def stuck_gates(self, diag: dict[str, float]) -> list[str]:
        """Names of gate diagnostics (a name containing 'gate' and not 'std') outside [gate_low, gate_high]."""
        return [k for k, v in diag.items() if "gate" in k and "std" not in k
                and (v < self.gate_low or v > self.gate_high)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # record only on batches whose end may log (the step count advances by one, or not if skipped)
        step, n = trainer.global_step, self.every_n_steps
        pl_module.record_diagnostics = step % n == 0 or (step + 1) % n == 0

    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.record_diagnostics = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        diag = self.collect(pl_module)
        if not diag:
            return
        self.last = diag
        stuck = self.stuck_gates(diag)
        for name in stuck:
            if name not in self.warned:
                self.warned.add(name)
                log.warning("memory gate %s = %.4f is stuck %s (outside [%g, %g]) at step %d", name, diag[name],
                            "closed" if diag[name] < self.gate_low else "open", self.gate_low, self.gate_high,
                            trainer.global_step)
        metrics = {f"diag/{k}": v for k, v in diag.items()}
        metrics["diag/stuck_gates"] = float(len(stuck))
        pl_module.log_dict(metrics, batch_size=batch["input_ids"].shape[0])

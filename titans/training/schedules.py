"""Learning-rate schedules (used as Hydra `_partial_` targets)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, warmup_steps: int = 100, total_steps: int = 1000,
                  min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup from 0 over `warmup_steps`, then cosine decay to `min_lr_ratio * lr` at `total_steps`."""
    if warmup_steps < 0 or total_steps <= 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler: warmup_steps={warmup_steps!r} must be >= 0, total_steps={total_steps!r} > 0 "
                         f"(it follows trainer.max_steps) and min_lr_ratio={min_lr_ratio!r} in [0, 1].")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)

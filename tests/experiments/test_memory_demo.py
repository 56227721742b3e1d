"""The memory demo: test-time learning really stores associations (the layering test is tests/test_layering.py)."""

import torch

from experiments.memory_demo import build, recall


def test_memory_recalls_pairs_written_at_test_time():
    torch.manual_seed(0)
    for depth in (1, 2):
        mem = build(32, lr=0.05, chunk_size=8, depth=depth)
        few = recall(mem, 8, 32, seed=1, passes=4)
        many = recall(mem, 256, 32, seed=2, passes=4)
        assert few == 1.0, f"depth {depth}: 8 pairs should all be recalled, got {few:.2f}"
        assert many < few, "capacity is finite: 256 pairs in a 32-dim memory cannot all be recalled"


def test_untouched_memory_recalls_at_chance():
    mem = build(32, lr=0.0, chunk_size=8, depth=1)
    assert recall(mem, 32, 32, seed=3, passes=1) <= 0.2


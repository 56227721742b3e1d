"""Test-time learning really stores associations; titans/memory stays free of the heavy frameworks."""

import ast
from pathlib import Path

import torch

from titans.memory.demo import build, recall

MEMORY_DIR = Path(__file__).resolve().parents[2] / "titans" / "memory"
ALLOWED_TOP_LEVEL = {"torch", "einops", "safetensors", "titans", "__future__", "math", "json", "dataclasses",
                     "pathlib", "argparse", "time", "typing"}


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


def test_memory_package_imports_only_torch_and_einops():
    bad = []
    for path in MEMORY_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] not in ALLOWED_TOP_LEVEL:
                    bad.append(f"{path.name}: {name}")
    assert not bad, f"titans/memory must not import frameworks (DESIGN.md layering): {bad}"

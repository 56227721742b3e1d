"""The layering of DESIGN.md holds in every import, at module level and inside functions (parsed with `ast`).

- titans/memory imports torch, einops, safetensors (and the standard library) only, plus `titans.io`, the
  standard-library-only leaf every layer writes files through;
- the library (titans/ outside titans/training) never imports titans.training, benchmarks, data_gen,
  experiments, Lightning or Hydra;
- titans/training never imports benchmarks or experiments;
- benchmarks never import experiments (experiments compose the layers below, nothing imports them);
- data_gen uses only titans.tokenizers from the library;
- no two files import each other (a package's `__init__` handing names on is fine).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("titans", "benchmarks", "data_gen", "experiments")
LIGHTNING = {"lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities"}
HYDRA = {"hydra", "omegaconf"}
MEMORY_ALLOWED = {"torch", "einops", "safetensors"} | set(sys.stdlib_module_names)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files += [ROOT / "train.py", ROOT / "evaluate.py"]
    return {_module_name(p): p for p in files if p.is_file()}


SOURCES = _sources()


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file; `from a import b` counts `a.b` when that is a module."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in SOURCES)
    return found


IMPORTS = {name: _imports(path) for name, path in SOURCES.items()}


def _violations(prefix: str, forbidden) -> list[str]:
    return sorted(f"{src} imports {dst}" for src, deps in IMPORTS.items()
                  if src == prefix or src.startswith(prefix + ".") for dst in deps if forbidden(src, dst))


def _top(module: str) -> str:
    return module.split(".")[0]


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_import_graph_is_read():
    """The parser sees what is there (a layering test that reads nothing passes everything)."""
    assert {"titans.memory.neural_memory", "titans.training.run", "benchmarks.runner", "data_gen.registry"} <= set(
        SOURCES)
    assert "torch" in IMPORTS["titans.memory.neural_memory"]
    assert "titans.tokenizers" in IMPORTS["data_gen.common"] or any(
        _under(d, "titans") for deps in (IMPORTS[m] for m in SOURCES if _under(m, "data_gen")) for d in deps)


def test_memory_imports_torch_einops_safetensors_only():
    bad = _violations("titans.memory",
                      lambda src, dst: not (_top(dst) in MEMORY_ALLOWED or _under(dst, "titans.memory", "titans.io")))
    assert not bad, f"titans/memory imports only torch, einops, safetensors (DESIGN.md): {bad}"


def test_io_imports_the_standard_library_only():
    bad = _violations("titans.io", lambda src, dst: _top(dst) not in sys.stdlib_module_names)
    assert not bad, f"titans.io sits below every layer (titans.memory included): {bad}"


def test_library_imports_no_layer_above_it():
    def forbidden(src, dst):
        if _under(src, "titans.training"):
            return False
        return (_under(dst, "titans.training", "benchmarks", "data_gen", "experiments")
                or _top(dst) in LIGHTNING | HYDRA)

    bad = _violations("titans", forbidden)
    assert not bad, f"the library never imports titans.training, benchmarks, data_gen, Lightning or Hydra: {bad}"


def test_training_imports_no_benchmarks():
    bad = _violations("titans.training", lambda src, dst: _under(dst, "benchmarks", "experiments"))
    assert not bad, f"titans/training never imports benchmarks (the evaluation entry is benchmarks.evaluate): {bad}"


def test_nothing_below_imports_experiments():
    bad = [v for pkg in ("titans", "benchmarks", "data_gen")
           for v in _violations(pkg, lambda src, dst: _under(dst, "experiments"))]
    assert not bad, f"experiments compose the layers below; nothing imports them: {bad}"


def test_data_gen_uses_only_the_tokenizers_of_the_library():
    bad = _violations("data_gen", lambda src, dst: _under(dst, "titans") and not _under(dst, "titans.tokenizers")
                      or _under(dst, "benchmarks", "experiments"))
    assert not bad, f"data_gen uses only titans.tokenizers from the library: {bad}"


def test_no_two_files_import_each_other():
    init = {name for name, path in SOURCES.items() if path.name == "__init__.py"}
    pairs = sorted({tuple(sorted((a, b))) for a, deps in IMPORTS.items() for b in deps
                    if b in SOURCES and b != a and a in IMPORTS[b] and a not in init and b not in init})
    assert not pairs, f"files that import each other (move the shared part down a layer): {pairs}"


@pytest.mark.parametrize("rule", ["memory", "library", "pair"])
def test_the_rules_catch_a_violation(rule, monkeypatch):
    """Each rule fails on a planted import (so a passing run means something)."""
    if rule == "memory":
        monkeypatch.setitem(IMPORTS, "titans.memory.neural_memory", IMPORTS["titans.memory.neural_memory"] | {"numpy"})
        check = test_memory_imports_torch_einops_safetensors_only
    elif rule == "library":
        monkeypatch.setitem(IMPORTS, "titans.patch", IMPORTS["titans.patch"] | {"benchmarks.runner"})
        check = test_library_imports_no_layer_above_it
    else:
        monkeypatch.setitem(IMPORTS, "titans.memory.config", IMPORTS["titans.memory.config"] | {"titans.memory.state"})
        monkeypatch.setitem(IMPORTS, "titans.memory.state", IMPORTS["titans.memory.state"] | {"titans.memory.config"})
        check = test_no_two_files_import_each_other
    with pytest.raises(AssertionError):
        check()

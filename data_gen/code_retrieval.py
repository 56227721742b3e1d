"""Code retrieval: a function definition far before a use site that must repeat its parameter list.

Source: any local tree of .py files (default: this Python's standard library). The definition of a
top-level function is placed early (depth in [depth_min, depth_max]); the rest is other code
blocks of the tree that never mention the function's name or its parameter list; the input ends
with a call-site prompt `def name(` whose completion is the parameter list. The answer occurs
exactly once in the input: inside the definition.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from pathlib import Path

from data_gen.common import Piece, check_range, make_sample
from data_gen.haystacks import place_in_units
from data_gen.registry import register

PREFIX = "# A collection of Python source code.\n\n"
SUFFIX = "\n\n# Repeat the signature of `{name}`, defined earlier in this text:\ndef {name}("
DEFAULTS = dict(root=None, max_files=120, depth_min=0.0, depth_max=0.2, min_params_chars=12)
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}


@functools.lru_cache(maxsize=4)
def index_tree(root: str, max_files: int):
    """(definitions [(name, params, source)], filler blocks) of the first `max_files` .py files."""
    files = sorted(p for p in Path(root).rglob("*.py") if not (set(p.relative_to(root).parts) & SKIP_DIRS))
    defs, blocks = [], []
    for path in files[:max_files]:
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and len(node.args.args) >= 2:
                params = ast.unparse(node.args)
                seg = ast.get_source_segment(src, node) or ""
                if f"def {node.name}({params}):" in seg and len(seg) < 3000 and "<|" not in seg:
                    defs.append((node.name, params, seg))
        blocks += [b.strip("\n") for b in src.split("\n\n") if b.strip() and "<|" not in b and len(b) < 4000]
    if not defs or not blocks:
        raise ValueError(f"root={root!r}: no usable Python functions found; give a directory with .py files")
    return defs, blocks


def _validate_params(p: dict) -> None:
    check_range("max_files", p["max_files"], 1)
    check_range("depth_min", p["depth_min"], 0.0, 1.0)
    check_range("depth_max", p["depth_max"], p["depth_min"], 1.0)
    root = p["root"] or sysconfig.get_paths()["stdlib"]
    if not Path(root).is_dir():
        raise ValueError(f"root={root!r} is not a directory; give a local source tree (default: the stdlib)")


def _check(sample: dict, params: dict) -> list[str]:
    text, answer = sample["input"], sample["answer"]
    if text.count(answer) != 1:
        return [f"parameter list occurs {text.count(answer)} times, expected once (in the definition)"]
    d = sample["meta"]["needles"][0]
    if answer not in d["text"]:
        return ["answer is not inside the definition"]
    return []


@register("code_retrieval", DEFAULTS, "code", "repeat the signature of a function defined far earlier", _check,
          _validate_params)
def code_retrieval(rng, length: int, counter, p: dict) -> dict:
    root = str(p["root"] or sysconfig.get_paths()["stdlib"])
    defs, blocks = index_tree(root, int(p["max_files"]))
    budget_total = length
    for _ in range(50):
        name, params, source = rng.choice(defs)
        if len(params) >= p["min_params_chars"] and counter.count(source) < budget_total // 3:
            break
    else:
        raise ValueError(f"length too small for code_retrieval: no definition shorter than a third of {length} "
                         "tokens with a long enough parameter list; raise length or lower min_params_chars")
    clean = [b for b in blocks if name not in b and params not in b]
    start = rng.randrange(len(clean))
    cache = counter.__dict__.setdefault("_code_counts", {})
    if (root, p["max_files"], name) not in cache:
        cache.clear()
        cache[(root, p["max_files"], name)] = counter.counts(clean)
    counts = cache[(root, p["max_files"], name)]
    completion = params + "):"
    budget = length - counter.count(completion)
    piece = Piece(source, "definition", {"name": name})
    depth = rng.uniform(p["depth_min"], p["depth_max"])
    text, starts, n, k, slack = place_in_units(counter, clean, counts, "\n\n", start, PREFIX, SUFFIX.format(name=name),
                                               [piece], [depth], budget, "code_retrieval")
    return make_sample("code_retrieval", text, params, completion, counter, length, length - budget, [piece], starts,
                       n_tokens=n, fill_slack=slack, name=name, root=root, haystack_units=k)

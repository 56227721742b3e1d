"""Hash-hop: "The access token for User_x is h." deep in a haystack, single or k-hop.

A k-hop chain is User_x -> h1 -> h2 -> ... -> hk, one link sentence per hop
("The access token for h1 is h2."), every link present, links at random depths (and, by default,
in random order). Distractor links use fresh entities only: no entity of the chain, and no entity
twice, so the chain has exactly one reading.

Curriculum knobs (variations of the one skill):
- `n_pairs`: distractor links (other users' tokens) at random depths; an int, a range `[0, 16]`
  (drawn per sample) or a mapping {n_pairs: weight};
- `hash_len`: characters of every access token; an int, a range or a mapping, like `n_pairs`;
- `near_users`: how many of the distractor links belong to users whose id differs from the queried user's in only
  1 or 2 of its 5 characters ("User_6a0c9" beside "User_dc0c9"); an int, range or mapping like `n_pairs`, at most
  `n_pairs` per sample (default 0: every distractor id drawn at random);
- `haystack`: `noise`, `essay`, `code` (the standard library's source), `mixed` (one of those three per
  sample), `pairs` (a haystack made only of distractor links) or a mapping {kind: weight};
- `hops` (the question asks for one user; with hops > 1 it follows the chain), the depth range of the
  chain's links, `order`.
"""

from __future__ import annotations

import re

from data_gen.common import Piece, check_choice, check_int, check_int_spec, check_range, draw_int, make_sample
from data_gen.haystacks import RETRIEVAL_HAYSTACKS, check_haystack, draw_haystack, place_in_haystack, place_in_units
from data_gen.passkey import draw_depth
from data_gen.registry import register

LINK = "The access token for {a} is {b}."
LINK_RE = re.compile(r"The access token for (\S+) is ([0-9a-z]+)\.")
INTRO = "Memorize the access tokens hidden in the following text. I will ask you about them afterwards."
QUESTION_1 = "What is the access token for {user}? The access token for {user} is"
QUESTION_K = ("Start from {user}: look up its access token, then the access token for that token, {hops} lookups "
              "in all. What is the final access token? The final access token is")

DEFAULTS = dict(hops=1, n_pairs=0, hash_len=6, haystack="noise", depth=None, depth_min=0.0, depth_max=1.0,
                order="random", intro=True, near_users=0)
HASH_ALPHABET = "0123456789abcdef"


def _validate_params(p: dict) -> None:
    check_int("hops", p["hops"], 1, 64)
    check_int_spec("n_pairs", p["n_pairs"], 0)
    check_int_spec("hash_len", p["hash_len"], 4, 64)
    check_int_spec("near_users", p["near_users"], 0)
    check_haystack(p["haystack"], (*RETRIEVAL_HAYSTACKS, "pairs"))
    if not isinstance(p["intro"], bool):
        raise ValueError(f"intro={p['intro']!r} is not allowed; allowed: true or false")
    check_choice("order", p["order"], ("random", "forward", "backward"))
    check_range("depth_min", p["depth_min"], 0.0, 1.0)
    check_range("depth_max", p["depth_max"], p["depth_min"], 1.0)
    if p["depth"] is not None:
        check_range("depth", p["depth"], 0.0, 1.0)


class Entities:
    """Fresh, never repeated entity names of one sample."""

    def __init__(self, rng, hash_len: int):
        self.rng, self.hash_len, self.used = rng, hash_len, set()

    def _fresh(self, make) -> str:
        while True:
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name

    def hash(self) -> str:
        def make() -> str:
            while True:  # at least two digits, so a hash is never an English word of the essays ("facade")
                h = "".join(self.rng.choice(HASH_ALPHABET) for _ in range(self.hash_len))
                if sum(c.isdigit() for c in h) >= 2:
                    return h

        return self._fresh(make)

    def user(self) -> str:
        return self._fresh(lambda: "User_" + "".join(self.rng.choice(HASH_ALPHABET) for _ in range(5)))

    def near_user(self, user: str) -> str:
        """A fresh user id equal to `user`'s but for 1 or 2 of its 5 characters (each redrawn to another one)."""
        def make() -> str:
            chars = list(user[len("User_"):])
            for i in self.rng.sample(range(len(chars)), self.rng.choice((1, 2))):
                chars[i] = self.rng.choice([c for c in HASH_ALPHABET if c != chars[i]])
            return "User_" + "".join(chars)

        return self._fresh(make)


def _check(sample: dict, params: dict) -> list[str]:
    meta, text = sample["meta"], sample["input"]
    chain = meta["chain"]
    links = LINK_RE.findall(text)
    table: dict[str, str] = {}
    for a, b in links:
        if a in table:
            return [f"entity {a} has two access tokens"]
        table[a] = b
    node = chain[0]
    for _ in range(meta["hops"]):
        if node not in table:
            return [f"chain broken at {node}"]
        node = table[node]
    if node != sample["answer"]:
        return [f"chain resolves to {node}, answer is {sample['answer']}"]
    if text.count(sample["answer"]) != 1:
        return [f"answer {sample['answer']} occurs {text.count(sample['answer'])} times"]
    for e in chain[1:-1]:
        if text.count(e) != 2:
            return [f"intermediate {e} occurs {text.count(e)} times, expected 2"]
    return []


@register("hashhop", DEFAULTS, "hashhop", "access tokens of users, single or k-hop chains", _check, _validate_params)
def hashhop(rng, length: int, counter, p: dict) -> dict:
    hops = int(p["hops"])
    n_pairs = draw_int(rng, p["n_pairs"])
    hash_len = draw_int(rng, p["hash_len"])
    haystack = draw_haystack(rng, p["haystack"])
    ents = Entities(rng, hash_len)
    chain = [ents.user()] + [ents.hash() for _ in range(hops)]
    links = [Piece(LINK.format(a=chain[i], b=chain[i + 1]), "link", {"hop": i + 1}) for i in range(hops)]
    depths = sorted(draw_depth(rng, p) for _ in links)
    if p["order"] == "random":
        rng.shuffle(depths)
    elif p["order"] == "backward":
        depths.reverse()
    near = min(draw_int(rng, p["near_users"]), n_pairs)  # a plain 0 (the default) draws nothing
    distractors = [Piece(LINK.format(a=ents.near_user(chain[0]) if i < near else ents.user(), b=ents.hash()),
                         "distractor") for i in range(n_pairs)]
    pieces = links + distractors
    depths += [rng.random() for _ in distractors]
    question = QUESTION_1.format(user=chain[0]) if hops == 1 else QUESTION_K.format(user=chain[0], hops=hops)
    completion = " " + chain[-1]
    budget = length - counter.count(completion)
    prefix = INTRO + "\n" if p["intro"] else ""
    what = f"hashhop (hops={hops}, n_pairs={n_pairs}, hash_len={hash_len}, near_users={near})"
    if haystack == "pairs":
        est = counter.count(LINK.format(a=chain[0], b=chain[1])) + 1
        units = [LINK.format(a=ents.user(), b=ents.hash()) for _ in range(max(1, budget // max(1, est - 2) + 8))]
        text, starts, n, k, slack = place_in_units(counter, units, counter.counts(units), " ", 0, prefix,
                                                   "\n" + question, pieces, depths, budget, what)
    else:
        text, starts, n, k, slack = place_in_haystack(rng, counter, haystack, prefix, "\n" + question, pieces,
                                                      depths, budget, what)
    return make_sample("hashhop", text, chain[-1], completion, counter, length, length - budget, pieces, starts,
                       n_tokens=n, hops=hops, chain=chain, haystack=haystack, haystack_units=k, fill_slack=slack,
                       n_pairs=n_pairs, hash_len=hash_len, near_users=near)

"""Dependency trace: reporting chains of 2-4 hops among essay sentences, yes/no and who-questions.

"QuietFalcon reports to BoldOtter." One main chain e0 -> e1 -> ... -> ek and `n_chains`
distractor chains of the same shape, all with fresh names (no name is reused anywhere), so the
graph is a set of disjoint chains and every question has exactly one answer:
- who:   "Who is at the top of e0's reporting chain?" -> ek (ek appears once in the input).
- yesno: "Does e0 report, directly or indirectly, to Y?" -> yes (Y = ek) / no (Y = a distractor's top).
"""

from __future__ import annotations

import re

from data_gen.common import Piece, check_choice, check_range, make_sample
from data_gen.haystacks import HAYSTACKS, place_in_haystack, simple_words
from data_gen.registry import register

FACT = "{a} reports to {b}."
FACT_RE = re.compile(r"\b([A-Z][a-z]+[A-Z][a-z]+) reports to ([A-Z][a-z]+[A-Z][a-z]+)\.")
INTRO = "Read the text and track who reports to whom. I will ask you about the reporting chains afterwards."
WHO = "Who is at the top of {e}'s reporting chain? The top of {e}'s reporting chain is"
YESNO = "Does {e} report, directly or indirectly, to {y}? Answer yes or no. Answer:"
DEFAULTS = dict(hops=3, n_chains=2, question="mixed", haystack="essay", intro=True)


def _validate_params(p: dict) -> None:
    check_range("hops", p["hops"], 1, 16)
    check_range("n_chains", p["n_chains"], 1, 64)
    check_choice("question", p["question"], ("who", "yesno", "mixed"))
    check_choice("haystack", p["haystack"], HAYSTACKS)


def fresh_names(rng, n: int) -> list[str]:
    adjs, nouns = simple_words("adjectives"), simple_words("nouns")
    out: list[str] = []
    while len(out) < n:
        name = rng.choice(adjs).capitalize() + rng.choice(nouns).capitalize()
        if name not in out:
            out.append(name)
    return out


def _check(sample: dict, params: dict) -> list[str]:
    boss: dict[str, str] = {}
    for a, b in FACT_RE.findall(sample["input"]):
        if a in boss:
            return [f"{a} has two managers"]
        boss[a] = b
    node, path = sample["meta"]["start"], []
    while node in boss and len(path) < 100:
        node = boss[node]
        path.append(node)
    if len(path) != sample["meta"]["hops"]:
        return [f"chain from {sample['meta']['start']} has {len(path)} hops"]
    if sample["meta"]["question"] == "who":
        ok = node == sample["answer"] and sample["input"].count(node) == 1
    else:
        ok = ("yes" if sample["meta"]["target"] in path else "no") == sample["answer"]
    return [] if ok else [f"answer {sample['answer']} does not follow from the facts"]


@register("dependency", DEFAULTS, "dependency", "reporting chains, yes/no and who questions", _check, _validate_params)
def dependency(rng, length: int, counter, p: dict) -> dict:
    hops, n_chains = int(p["hops"]), int(p["n_chains"])
    names = fresh_names(rng, (hops + 1) * (n_chains + 1))
    chains = [names[i * (hops + 1):(i + 1) * (hops + 1)] for i in range(n_chains + 1)]
    pieces = [Piece(FACT.format(a=ch[j], b=ch[j + 1]), "link" if c == 0 else "distractor", {"chain": c, "hop": j + 1})
              for c, ch in enumerate(chains) for j in range(hops)]
    depths = [rng.random() for _ in pieces]
    kind = p["question"] if p["question"] != "mixed" else rng.choice(["who", "yesno"])
    start = chains[0][0]
    if kind == "who":
        question, answer, target = WHO.format(e=start), chains[0][-1], chains[0][-1]
    else:
        target = chains[0][-1] if rng.random() < 0.5 else rng.choice(chains[1:])[-1]
        answer = "yes" if target == chains[0][-1] else "no"
        question = YESNO.format(e=start, y=target)
    completion = " " + answer
    budget = length - counter.count(completion)
    prefix = INTRO + "\n" if p["intro"] else ""
    text, starts, n, k, slack = place_in_haystack(rng, counter, p["haystack"], prefix, "\n" + question, pieces,
                                                  depths, budget, f"dependency (hops={hops}, n_chains={n_chains})")
    return make_sample("dependency", text, answer, completion, counter, length, length - budget, pieces, starts,
                       n_tokens=n, fill_slack=slack, hops=hops, question=kind, start=start, target=target,
                       chain=chains[0], haystack=p["haystack"], haystack_units=k, extractive=kind == "who")

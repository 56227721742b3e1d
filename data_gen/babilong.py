"""BABILong-style qa1-qa5: a small bAbI-like world simulator whose facts are spread among essay
sentences. It is *not* the published BABILong data; it follows its recipe (bAbI facts in PG-19-like
text, a task instruction, the context in <context> tags, then the question).

qa1 single supporting fact (where is an actor), qa2 two facts (where is an object, carried or
dropped), qa3 three facts (where was an object before a place), qa4 two-argument relations
(what is north of a room), qa5 three-argument relations (who gave what to whom).
"""

from __future__ import annotations

import re

from data_gen.common import Piece, check_choice, check_range, make_sample
from data_gen.haystacks import HAYSTACKS, place_in_haystack
from data_gen.registry import register

ACTORS = ("Mary", "John", "Daniel", "Sandra", "Jeff", "Fred", "Bill", "Julie")
ROOMS = ("bathroom", "bedroom", "kitchen", "garden", "office", "hallway")
OBJECTS = ("football", "apple", "milk")
MOVE, TAKE, DROP = ("moved to", "went to", "journeyed to", "travelled to"), ("picked up", "got", "grabbed"), (
    "dropped", "put down", "discarded")
INSTRUCTION = {
    "qa1": "I will give you context with the facts about positions of different persons hidden in some random text "
           "and a question. You need to answer the question based only on the information from the facts. If a "
           "person was in different locations, use the latest location to answer the question.",
    "qa2": "I give you context with the facts about locations and actions of different persons hidden in some random "
           "text and a question. You need to answer the question based only on the information from the facts. If a "
           "person got an item in the first location and travelled to the second location the item is also in the "
           "second location. If a person dropped an item in the first location and moved to the second location the "
           "item remains in the first location.",
    "qa3": "I give you context with the facts about locations and actions of different persons hidden in some random "
           "text and a question. You need to answer the question based only on the information from the facts. If a "
           "person got an item in the first location and travelled to the second location the item is also in the "
           "second location. If a person dropped an item in the first location and moved to the second location the "
           "item remains in the first location.",
    "qa4": "I will give you context with the facts about locations and their relations hidden in some random text and "
           "a question. You need to answer the question based only on the information from the facts.",
    "qa5": "I will give you context with the facts about different people, their location and actions, hidden in some "
           "random text and a question. You need to answer the question based only on the information from the "
           "facts.",
}
DIRS = {"north": "south", "south": "north", "east": "west", "west": "east"}
FACT_RE = re.compile(r"\b(" + "|".join(ACTORS) + r") (" + "|".join(MOVE + TAKE + DROP) + r") the (\w+)\.")
DEFAULTS = dict(qa="qa1", num_facts=8, haystack="essay")


def _validate_params(p: dict) -> None:
    check_choice("qa", p["qa"], tuple(INSTRUCTION))
    check_range("num_facts", p["num_facts"], 2, 500)
    check_choice("haystack", p["haystack"], HAYSTACKS)


def replay(events):
    """Actor and object locations after `events` [(actor, verb, arg)]; object location histories."""
    where: dict[str, str] = {}
    holder: dict[str, str] = {}
    history: dict[str, list[str]] = {o: [] for o in OBJECTS}
    for actor, verb, arg in events:
        if verb in MOVE:
            where[actor] = arg
            for o, h in holder.items():
                if h == actor and (not history[o] or history[o][-1] != arg):
                    history[o].append(arg)
        elif verb in TAKE:
            holder[arg] = actor
            if actor in where and (not history[arg] or history[arg][-1] != where[actor]):
                history[arg].append(where[actor])
        elif verb in DROP:
            holder.pop(arg, None)
    return where, holder, history


def simulate(rng, qa: str, n: int):
    """Random valid events (actors move, take objects in their room, drop what they hold)."""
    actors = rng.sample(ACTORS, 4)
    events, where, holder = [], {}, {}
    for a in actors[:2]:  # everyone who acts is somewhere first
        room = rng.choice(ROOMS)
        events.append((a, rng.choice(MOVE), room))
        where[a] = room
    while len(events) < n:
        a = rng.choice(actors)
        held = [o for o, h in holder.items() if h == a]
        free = [o for o in OBJECTS if o not in holder]
        r = rng.random()
        if qa != "qa1" and a in where and free and r < 0.3:
            o = rng.choice(free)
            events.append((a, rng.choice(TAKE), o))
            holder[o] = a
        elif qa != "qa1" and held and r < 0.45:
            o = rng.choice(held)
            events.append((a, rng.choice(DROP), o))
            del holder[o]
        else:
            room = rng.choice([x for x in ROOMS if x != where.get(a)])
            events.append((a, rng.choice(MOVE), room))
            where[a] = room
    return events


def _question(rng, qa: str, events):
    where, holder, history = replay(events)
    if qa == "qa1":
        a = rng.choice(sorted(where))
        return f"Where is {a}?", where[a]
    known = [o for o in OBJECTS if history[o]]
    if qa == "qa2" and known:
        o = rng.choice(known)
        return f"Where is the {o}?", history[o][-1]
    if qa == "qa3":
        multi = [o for o in OBJECTS if len(history[o]) >= 2]
        if multi:
            o = rng.choice(multi)
            return f"Where was the {o} before the {history[o][-1]}?", history[o][-2]
    return None


def _check(sample: dict, params: dict) -> list[str]:
    qa = sample["meta"]["qa"]
    if qa in ("qa4", "qa5"):
        return []  # answers follow from a single stated fact; checked as extractive + unique below
    events = [(a, v, x) for a, v, x in FACT_RE.findall(sample["input"])]
    where, _, history = replay(events)
    q = sample["meta"]["question"]
    m = re.match(r"Where is (?:the )?(\w+)\?|Where was the (\w+) before the (\w+)\?", q)
    if m.group(1) in ACTORS:
        got = where.get(m.group(1))
    elif m.group(1):
        got = (history.get(m.group(1)) or [None])[-1]
    else:
        h = history.get(m.group(2), [])
        got = h[-2] if len(h) >= 2 and h[-1] == m.group(3) else None
    return [] if got == sample["answer"] else [f"facts give {got}, answer is {sample['answer']}"]


def _relations(rng, qa: str, n: int):
    if qa == "qa4":
        a, b, c = rng.sample(ROOMS, 3)
        d1, d2 = rng.sample(sorted(DIRS), 2)
        facts = [f"The {a} is {d1} of the {b}.", f"The {c} is {d2} of the {b}."]
        if rng.random() < 0.5:
            return facts, f"What is {d1} of the {b}?", a
        return facts, f"What is the {b} {DIRS[d1]} of?", a
    people = rng.sample(ACTORS, 3)
    objs = rng.sample(OBJECTS, len(OBJECTS))
    facts, gives = [], []
    for i in range(max(2, n // 2)):
        g, r = rng.sample(people, 2)
        o = objs[i % len(objs)]
        facts.append(f"{g} gave the {o} to {r}.")
        gives.append((g, o, r))
    g, o, r = gives[-1]
    form = rng.randrange(3)
    if form == 0 and sum(1 for x in gives if x[1:] == (o, r)) == 1:
        return facts, f"Who gave the {o} to {r}?", g
    if form == 1 and sum(1 for x in gives if (x[0], x[2]) == (g, r)) == 1:
        return facts, f"What did {g} give to {r}?", o
    if sum(1 for x in gives if x[:2] == (g, o)) == 1:
        return facts, f"Who did {g} give the {o} to?", r
    return facts[-1:], f"Who gave the {o} to {r}?", g


@register("babilong", DEFAULTS, "babilong", "BABILong-style qa1-qa5 facts in essays", _check, _validate_params)
def babilong(rng, length: int, counter, p: dict) -> dict:
    qa = p["qa"]
    if qa in ("qa4", "qa5"):
        facts, question, answer = _relations(rng, qa, int(p["num_facts"]))
    else:
        for _ in range(50):
            events = simulate(rng, qa, int(p["num_facts"]))
            qa_pair = _question(rng, qa, events)
            if qa_pair:
                break
        else:
            raise ValueError(f"babilong {qa}: num_facts={p['num_facts']} too small to ask a question; raise it")
        facts = [f"{a} {v} the {x}." for a, v, x in events]
        question, answer = qa_pair
    pieces = [Piece(f, "fact") for f in facts]
    depths = sorted(rng.random() for _ in pieces)  # facts keep their order
    completion = " " + answer
    budget = length - counter.count(completion)
    prefix = INSTRUCTION[qa] + "\n\n<context>\n"
    suffix = f"\n</context>\n\nQuestion: {question}\nAnswer:"
    text, starts, n, k, slack = place_in_haystack(rng, counter, p["haystack"], prefix, suffix, pieces, depths,
                                                  budget, f"babilong {qa} (num_facts={p['num_facts']})")
    return make_sample("babilong", text, answer, completion, counter, length, length - budget, pieces, starts,
                       n_tokens=n, fill_slack=slack, qa=qa, question=question, haystack=p["haystack"],
                       haystack_units=k)

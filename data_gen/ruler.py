"""RULER's variable tracking (vt), common words (cwe) and frequent words (fwe), exact templates.

Templates and answer prefixes are RULER's constants.py (base-model template: template + answer
prefix). Protocol as RULER's scripts/data/synthetic/{variable_tracking, common_words_extraction,
freq_words_extraction}.py, with the haystack size the largest that fits `length` minus
tokens_to_generate. Differences: no one-shot ICL example is prepended (RULER adds one for vt and
cwe by default); cwe samples words without replacement from wonderwords only (RULER falls back to
a larger word list past ~8.5K words); vt uses the noise haystack only.
"""

from __future__ import annotations

import re
import string
from collections import Counter as Tally

from data_gen.common import Piece, check_range, make_sample
from data_gen.haystacks import NOISE, cwe_words, place_in_units
from data_gen.registry import register

VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                    "are assgined the value {query}, they are: ")  # sic: RULER's spelling
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_ANSWER_PREFIX = (" Answer: According to the coded text above, the three most frequently appeared words are:")


def _search(build, lo: int, hi: int, budget: int, counter, what: str):
    """Largest n in [lo, hi] with count(build(n)) <= budget (count is monotone in n)."""
    first = build(lo)
    if counter.count(first[0]) > budget:
        raise ValueError(f"length too small for {what}: the smallest input needs {counter.count(first[0])} tokens, "
                         f"only {budget} are available (length minus tokens_to_generate)")
    best = lo
    while lo <= hi:
        mid = (lo + hi) // 2
        if counter.count(build(mid)[0]) <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best, build(best)


# ----------------------------------------------------------------------------------------------- vt
def _vt_check(sample: dict, params: dict) -> list[str]:
    table = dict(re.findall(r"VAR ([A-Z]{5}) = (\d+|VAR [A-Z]{5})", sample["input"]))
    value = sample["meta"]["query"]
    resolved = []
    for var in table:
        node, seen = var, 0
        while table.get(node, "").startswith("VAR") and seen < 100:
            node, seen = table[node][4:], seen + 1
        if table.get(node) == value:
            resolved.append(var)
    if sorted(resolved) != sorted(sample["answer"]):
        return [f"variables resolving to {value} are {sorted(resolved)}, answer is {sample['answer']}"]
    return []


@register("vt", dict(num_chains=1, num_hops=4, tokens_to_generate=30), "ruler", "RULER variable tracking", _vt_check)
def vt(rng, length: int, counter, p: dict) -> dict:
    check_range("num_chains", p["num_chains"], 1, 32)
    check_range("num_hops", p["num_hops"], 1, 64)
    chains, hops = int(p["num_chains"]), int(p["num_hops"])
    names: list[str] = []
    while len(names) < chains * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    values: list[str] = []
    while len(values) < chains:
        v = str(rng.randint(10000, 99999))
        if v not in values:
            values.append(v)
    statements = []
    for c in range(chains):
        vs = names[c * (hops + 1):(c + 1) * (hops + 1)]
        statements.append([f"VAR {vs[0]} = {values[c]}"] + [f"VAR {vs[j + 1]} = VAR {vs[j]} " for j in range(hops)])
    pieces = [Piece(s, "link", {"chain": c, "hop": j}) for c, ch in enumerate(statements) for j, s in enumerate(ch)]
    prompt = VT_TEMPLATE + VT_ANSWER_PREFIX
    prefix, suffix = prompt.format(context="\0", query=values[0], num_v=hops + 1).split("\0")

    def slot_fn(k):  # RULER: per chain, sorted(random.sample(range(len(sentences)), len(chain)))
        slots = []
        for ch in statements:
            slots += sorted(rng.sample(range(max(k, len(ch))), len(ch)))
        return slots

    text, _, n, k, slack = place_in_units(counter, (NOISE + "\n",), [counter.count(NOISE + "\n")], " ", 0, prefix,
                                          suffix, pieces, [0.0] * len(pieces), length - p["tokens_to_generate"],
                                          "vt", slot_fn)
    text = prefix + text[len(prefix):len(text) - len(suffix)].replace(". \n", ".\n") + suffix
    starts = [text.find(pc.text) for pc in pieces]
    answer = names[: hops + 1]
    return make_sample("vt", text, answer, " " + " ".join(answer), counter, length, p["tokens_to_generate"], pieces,
                       starts, fill_slack=slack, query=values[0], num_chains=chains, num_hops=hops, haystack_units=k)


# ---------------------------------------------------------------------------------------------- cwe
def _cwe_check(sample: dict, params: dict) -> list[str]:
    body = sample["input"].split("most often.\n", 1)[1].rsplit("\nQuestion:", 1)[0]
    words = re.split(r"(?:^| )\d+\. ", body)[1:]
    tally = Tally(words)
    common = sample["answer"]
    if any(tally[w] != params["freq_cw"] for w in common):
        return ["a common word does not occur freq_cw times"]
    if max((c for w, c in tally.items() if w not in common), default=0) >= params["freq_cw"]:
        return ["an uncommon word is as frequent as a common one"]
    return []


@register("cwe", dict(freq_cw=30, freq_ucw=3, num_cw=10, tokens_to_generate=120), "ruler",
          "RULER common words extraction", _cwe_check)
def cwe(rng, length: int, counter, p: dict) -> dict:
    check_range("freq_cw", p["freq_cw"], 2)
    check_range("freq_ucw", p["freq_ucw"], 1, p["freq_cw"] - 1)
    check_range("num_cw", p["num_cw"], 1)
    vocab = cwe_words()
    seed = rng.getrandbits(64)

    def build(num_words):
        import random

        r = random.Random(seed)
        full = r.sample(vocab, num_words)
        common, uncommon = full[: p["num_cw"]], full[p["num_cw"]:]
        word_list = common * p["freq_cw"] + uncommon * p["freq_ucw"]
        r.shuffle(word_list)
        context = " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list))
        return (CWE_TEMPLATE + CWE_ANSWER_PREFIX).format(context=context, query=""), common

    budget = length - p["tokens_to_generate"]
    est = max(1, budget // max(1, 8 * p["freq_ucw"]))
    num, (text, common) = _search(build, p["num_cw"], min(len(vocab), 2 * est + 16), budget, counter, "cwe")
    if num == len(vocab):
        raise ValueError(f"cwe: length={length} needs more than the {len(vocab)} available words; raise freq_ucw")
    return make_sample("cwe", text, list(common), " " + ", ".join(common), counter, length, p["tokens_to_generate"],
                       fill_slack=40 + 12 * p["freq_ucw"], num_words=num)


# ---------------------------------------------------------------------------------------------- fwe
def _zeta(alpha: float, terms: int = 1000) -> float:
    """Riemann zeta(alpha) for alpha > 1 (scipy.special.zeta in RULER), by Euler-Maclaurin."""
    head = sum(k ** -alpha for k in range(1, terms))
    return head + terms ** (1 - alpha) / (alpha - 1) + 0.5 * terms ** -alpha + alpha / 12 * terms ** (-alpha - 1)


def _fwe_check(sample: dict, params: dict) -> list[str]:
    body = sample["input"].split("coded words. ", 1)[1].rsplit("\nQuestion:", 1)[0]
    tally = Tally(w for w in body.split(" ") if w != "...")
    top = tally.most_common(4)
    if [w for w, _ in top[:3]] != sample["answer"]:
        return [f"top-3 coded words {top[:3]} differ from the answer {sample['answer']}"]
    if len(top) > 3 and top[2][1] == top[3][1] or top[1][1] == top[2][1] or top[0][1] == top[1][1]:
        return [f"top coded words tie: {top}"]
    return []


@register("fwe", dict(alpha=2.0, coded_wordlen=6, vocab_size=2000, tokens_to_generate=50), "ruler",
          "RULER frequent words extraction", _fwe_check)
def fwe(rng, length: int, counter, p: dict) -> dict:
    check_range("alpha", p["alpha"], 1.01)
    check_range("coded_wordlen", p["coded_wordlen"], 2, 32)
    check_range("vocab_size", p["vocab_size"], 5)
    vocab_set: set[str] = set()
    while len(vocab_set) < p["vocab_size"]:
        vocab_set.add("".join(rng.choices(string.ascii_lowercase, k=p["coded_wordlen"])))
    vocab = sorted(vocab_set)
    rng.shuffle(vocab)
    vocab[0] = "..."  # RULER: the top-ranked word is noise
    zeta = _zeta(p["alpha"])
    seed = rng.getrandbits(64)

    def build(num_words):
        import random

        words = []
        for k, w in enumerate(vocab, start=1):
            words += [w] * int(num_words * k ** -p["alpha"] / zeta)
        random.Random(seed).shuffle(words)
        return FWE_TEMPLATE.format(context=" ".join(words), query="") + FWE_ANSWER_PREFIX, vocab[1:4]

    budget = length - p["tokens_to_generate"]
    num, (text, answer) = _search(build, 20, max(40, 2 * budget), budget, counter, "fwe")
    return make_sample("fwe", text, list(answer), " " + ", ".join(answer), counter, length, p["tokens_to_generate"],
                       fill_slack=max(64, budget // 10), num_words=num)


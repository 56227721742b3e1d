"""Where hash-hop misses go: the wrong link, or the right link misspelt.

    python -m experiments.hashhop_errors results/.../hashhop/samples.jsonl [--out errors.json]

Reads a run's `samples.jsonl` (the records of `benchmarks.runner.run_suite`; the last weight fingerprint
in the file, i.e. the newest model, unless `--weights`), regenerates each prompt from data_gen (same task,
length, parameters, seed and eval split as the runner) and, for every single-hop sample with distractor
links:
  - accuracy by the queried link's rank among the prompt's links (0 = the link nearest the question),
  - each miss classified by the link token it shares most characters with (in place): `queried_misspelt`
    (the queried link's, >= 4 of 6 characters), `other_link` (another link's, >= 4; its rank is kept),
    `no_link` (fewer); and the position of the first wrong character.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from titans.io import write_json

MIN_SHARED = 4  # characters in place (of 6) for a miss to count as a (misspelt) link token


def _same(a: str, b: str) -> int:
    return sum(x == y for x, y in zip(a, b))


def classify(prediction: str, answer: str, links: list[str]) -> dict:
    """One answer against the prompt's link tokens `links` (in prompt order; `answer` is one of them)."""
    pred = prediction.strip()
    q = links.index(answer)
    best = max(range(len(links)), key=lambda i: (_same(pred, links[i]), i == q))
    if pred == answer:
        kind = "correct"
    elif _same(pred, links[best]) < MIN_SHARED:
        kind = "no_link"
    elif best == q:
        kind = "queried_misspelt"
    else:
        kind = "other_link"
    first_wrong = next((i for i, (x, y) in enumerate(zip(pred, answer)) if x != y), min(len(pred), len(answer)))
    return {"kind": kind, "rank": len(links) - 1 - q, "other_rank": len(links) - 1 - best if kind == "other_link"
            else None, "first_wrong": None if kind == "correct" else first_wrong}


def analyse(records: list[dict], seed: int = 0) -> dict:
    import data_gen
    from data_gen.common import Counter as TokenCounter
    from data_gen.hashhop import LINK_RE
    from titans.tokenizers import byte_tokenizer

    counter = TokenCounter(byte_tokenizer())
    by_rank: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    kinds: dict[int, Counter] = defaultdict(Counter)
    first_wrong: dict[int, Counter] = defaultdict(Counter)
    other_rank: dict[int, Counter] = defaultdict(Counter)
    for r in records:
        cell = json.loads(r["cell"])
        sample = next(data_gen.iter_samples(cell["task"], 1, cell["length"], seed, counter, split="eval",
                                            start=r["index"], **cell["params"]))
        links = [m.group(2) for m in LINK_RE.finditer(sample["input"])]
        if sample["answer"] not in links or len(links) < 2:
            raise ValueError(f"sample {r['index']} at {cell['length']}: not a single-hop prompt with distractor "
                             f"links ({len(links)} link(s)); this analysis needs hashhop n_pairs >= 1, hops=1")
        c = classify(r["prediction"], sample["answer"], links)
        L = cell["length"]
        by_rank[L][c["rank"]].append(100.0 * (c["kind"] == "correct"))
        kinds[L][c["kind"]] += 1
        if c["first_wrong"] is not None:
            first_wrong[L][c["first_wrong"]] += 1
        if c["other_rank"] is not None:
            other_rank[L][c["other_rank"]] += 1
    return {
        "accuracy_by_rank": {str(L): {str(k): {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(d.items())}
                             for L, d in sorted(by_rank.items())},
        "outcomes": {str(L): dict(c) for L, c in sorted(kinds.items())},
        "first_wrong_char": {str(L): dict(sorted(c.items())) for L, c in sorted(first_wrong.items())},
        "other_link_rank": {str(L): dict(sorted(c.items())) for L, c in sorted(other_rank.items())},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", help="a hashhop samples.jsonl written by benchmarks.runner")
    parser.add_argument("--weights", default=None, help="weight fingerprint to analyse (default: the newest)")
    parser.add_argument("--seed", type=int, default=0, help="the runner's seed (default 0)")
    parser.add_argument("--out", default=None, help="write the analysis as JSON here")
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in Path(args.samples).read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"samples={args.samples}: no records")
    weights = args.weights or records[-1]["fingerprint"]["weights"]
    records = [r for r in records if r["fingerprint"]["weights"] == weights]
    if not records:
        raise ValueError(f"--weights={args.weights}: no record of that model in {args.samples}")
    result = {"samples": args.samples, "weights": weights, **analyse(records, args.seed)}
    for L, outcomes in result["outcomes"].items():
        n = sum(outcomes.values())
        print(f"{L:>5} tokens, {n} samples: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
              + f"; first wrong character {result['first_wrong_char'].get(L, {})}")
    if args.out:
        write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

"""Recall and throughput of `titans.manager.TitansManager` on a generated fact corpus.

    .venv/bin/python benchmarks/perf/manager.py                    # 10K documents, hashing embedder
    .venv/bin/python benchmarks/perf/manager.py --embedder minilm  # all-MiniLM-L6-v2 (offline package)

Corpus (`data_gen.facts.make_corpus`): templated facts about unique invented entities; each
fact has three queries: its own text, a paraphrased question, and a sentence that contains the fact.
All documents are added in order (memory_type None: written to the long-term memory and put in
short-term memory). A seeded sample of documents is queried with each query kind in each mode:
short_term / long_term (the memory read decoded against the store) / mac / mag / mal, and "exact"
(cosine over every document ever added: the ceiling). recall@k = the queried fact is in the top k.
"evicted own@5" is own-text recall@5 over the sampled documents no longer in short-term memory.
Prints a table and writes JSON (results/perf/manager.json by default).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_gen.facts import make_corpus  # noqa: E402
from titans.embedders import CachedEmbedder, HashingEmbedder, SentenceTransformerEmbedder  # noqa: E402
from titans.io import write_json  # noqa: E402
from titans.manager import LongTermMemoryConfig, TitansManager  # noqa: E402

MODES = ("exact", "short_term", "long_term", "mac", "mag", "mal")
KINDS = ("own", "paraphrase", "containing")


def recall(ranked: list[list[int]], wanted: np.ndarray, k: int) -> float:
    return float(np.mean([w in r[:k] for r, w in zip(ranked, wanted)]))


def run_config(args, corpus, embedder, long_term_size: int, depth: int, sample: np.ndarray) -> dict:
    cfg = LongTermMemoryConfig(memory_depth=depth)
    m = TitansManager(embedder, short_term_size=args.short_term, long_term_size=long_term_size,
                      vector_dim=args.dim, long_term_config=cfg)  # fmt: skip
    t = time.perf_counter()
    for s in range(0, len(corpus.docs), args.batch):
        m.add_documents(corpus.docs[s : s + args.batch])
    add_s = time.perf_counter() - t
    doc_emb = embedder.encode(corpus.docs)  # cached
    queries = {
        "own": [corpus.docs[i] for i in sample],
        "paraphrase": [corpus.paraphrases[i] for i in sample],
        "containing": [corpus.containing[i] for i in sample],
    }
    evicted = np.array([i not in m.short_term for i in sample])
    rows: dict[str, dict[str, float]] = {}
    query_s: dict[str, float] = {}
    for mode in MODES:
        row, spent = {}, 0.0
        for kind in KINDS:
            q = m._embed(queries[kind])
            t = time.perf_counter()
            if mode == "exact":  # the ceiling: cosine over every document ever added
                top = np.argsort(-(q @ doc_emb.T), axis=1)[:, :5]
                ranked = [list(r) for r in top]
            else:
                ranked = [[i for i, _, _ in r] for r in m.rank(q, 5, mode)]
            spent += time.perf_counter() - t
            row[f"{kind}@1"] = recall(ranked, sample, 1)
            row[f"{kind}@5"] = recall(ranked, sample, 5)
            if kind == "own":
                row["evicted own@5"] = recall([r for r, e in zip(ranked, evicted) if e], sample[evicted], 5)
        rows[mode] = row
        query_s[mode] = len(KINDS) * len(sample) / spent
    single = queries["paraphrase"][: args.latency_queries]
    t = time.perf_counter()
    for text in single:
        m.query(text, top_k=5)
    latency_ms = 1000 * (time.perf_counter() - t) / len(single)
    return {
        "long_term_size": long_term_size,
        "memory_depth": depth,
        "rows": rows,
        "stats": {k: v for k, v in m.stats()["long_term"].items() if k not in ("config", "gates")},
        "throughput": {
            "add_docs_per_s": len(corpus.docs) / add_s,
            "rank_queries_per_s": query_s,
            f"query_latency_ms_{m.architecture}": latency_ms,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="documents (>= 10K for the reported numbers)")
    p.add_argument("--sample", type=int, default=1000, help="documents queried per query kind")
    p.add_argument("--short-term", type=int, default=512)
    p.add_argument("--long-term", type=int, default=2048)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=256, help="documents per add_documents call")
    p.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    p.add_argument("--depths", default="1,2", help="memory depths for the long_term_size > n configuration")
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/perf/manager.json")
    args = p.parse_args()

    corpus = make_corpus(args.n, seed=args.seed)
    base = HashingEmbedder(dim=args.dim) if args.embedder == "hashing" else SentenceTransformerEmbedder()
    embedder = CachedEmbedder(base, cache_size=4 * args.n + 10)
    t = time.perf_counter()
    embedder.encode(corpus.docs)
    embed_per_s = args.n / (time.perf_counter() - t)
    sample = np.random.default_rng(args.seed).choice(args.n, size=min(args.sample, args.n), replace=False)

    configs = [(args.long_term, 1)] + [(args.n + 1024, int(d)) for d in args.depths.split(",") if d]
    runs = []
    for long_term_size, depth in configs:
        t = time.perf_counter()
        runs.append(run_config(args, corpus, embedder, long_term_size, depth, sample))
        print(f"# long_term_size={long_term_size} depth={depth}: {time.perf_counter() - t:.0f}s", file=sys.stderr)

    cols = [f"{k}@{j}" for k in KINDS for j in (1, 5)] + ["evicted own@5"]
    print(f"\nTitansManager recall: {args.n} documents, embedder={args.embedder}, short_term={args.short_term}, "
          f"{len(sample)} sampled facts per query kind")  # fmt: skip
    for run in runs:
        print(f"\nlong_term_size={run['long_term_size']} memory_depth={run['memory_depth']}  "
              f"(kept {run['stats']['size']}, rejected {run['stats']['rejected']}, evicted {run['stats']['evicted']})")
        print(f"| mode | {' | '.join(cols)} | queries/s |")
        print("|" + "---|" * (len(cols) + 2))
        for mode, row in run["rows"].items():
            qps = run["throughput"]["rank_queries_per_s"][mode]
            print(f"| {mode} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + f" | {qps:.0f} |")
        tp = run["throughput"]
        lat = [v for k, v in tp.items() if k.startswith("query_latency")][0]
        print(f"add {tp['add_docs_per_s']:.0f} docs/s (embeddings cached); query() latency {lat:.2f} ms")
    print(f"\nembedding ({args.embedder}): {embed_per_s:.0f} docs/s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "titans.manager recall and throughput",
        "settings": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},  # fmt: skip
        "embed_docs_per_s": embed_per_s,
        "runs": runs,
    }
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

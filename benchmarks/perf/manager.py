"""Recall and throughput of `titans.manager.TitansManager` on a generated fact corpus; exact vs approximate index.

    .venv/bin/python benchmarks/perf/manager.py --part recall                  # 10K documents, hashing embedder
    .venv/bin/python benchmarks/perf/manager.py --part recall --embedder minilm  # all-MiniLM-L6-v2 (offline)
    .venv/bin/python benchmarks/perf/manager.py --part index                   # exact vs usearch, 10K/100K/1M

Part "index": the long-term store's search (`titans.manager.index`) at 10K / 100K / 1M documents
(hashing embeddings of the same corpus, `--index-dim` wide): ExactIndex against UsearchIndex (HNSW,
`IndexConfig` defaults), both single-threaded. Vectors go in through the index interface in batches of
1024 (as a long-term write does); queries are the paraphrased questions of sampled facts, top-10.
Reported: add throughput (vectors/s), query latency p50/p99 (one query per call), batch throughput
(all queries in one call), recall@10 against exact search (tie-aware: a result counts when its exact
score reaches the exact 10th score), resident memory (process RSS growth while the index was built,
and the vectors/graph size the index reports). Then the whole manager at 10K (add + `query()` latency,
recall@10 of its results against the exact-index manager's).

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
import json
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
from titans.manager.index import IndexConfig, make_index  # noqa: E402

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


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def latency_ms(fn, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 of `fn(one query)` in ms."""
    times = []
    for i in range(len(queries)):
        t = time.perf_counter()
        fn(queries[i : i + 1])
        times.append(1000 * (time.perf_counter() - t))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def tie_aware_recall(found: np.ndarray, exact_scores: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Share of the top-10 whose exact score reaches the exact 10th score (ties count as found)."""
    k = exact_scores.shape[1]
    hits = []
    for q, ids, best in zip(queries, found, exact_scores):
        ids = ids[ids >= 0]
        true = vectors[ids] @ q if len(ids) else np.zeros(0)
        hits.append(min(int((true >= best[-1] - 1e-5).sum()), k) / k)
    return float(np.mean(hits))


def index_data(data: str, n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Store vectors `[n, dim]` and queries `[q, dim]`, unit rows. "facts": hashing embeddings of the fact
    corpus, queried with the paraphrased questions of sampled facts (hard for a graph: a question is far
    from every fact). "synthetic": n/100 Gaussian clusters, queried with noisy copies of sampled vectors."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(n_queries, n), replace=False)
    if data == "facts":
        corpus = make_corpus(n, seed=seed)
        embedder = HashingEmbedder(dim=dim)
        vectors = np.concatenate([embedder.encode(corpus.docs[s : s + 8192]) for s in range(0, n, 8192)])
        return vectors, embedder.encode([corpus.paraphrases[i] for i in sample])
    centers = rng.standard_normal((max(n // 100, 10), dim), dtype=np.float32)
    vectors = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):  # in parts: 1M x 384 floats of noise at once would double the memory
        m = min(65536, n - s)
        vectors[s : s + m] = centers[rng.integers(0, len(centers), m)] + 0.7 * rng.standard_normal((m, dim), np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[sample] + 1.2 / np.sqrt(dim) * rng.standard_normal((len(sample), dim), np.float32)
    return vectors, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def run_index(spec: str, args) -> dict:
    """Exact vs approximate search over one data set `data:n:dim` (see the module docstring)."""
    data, n, dim = spec.split(":")
    n, dim = int(n), int(dim)
    t = time.perf_counter()
    vectors, queries = index_data(data, n, dim, args.index_queries, args.seed)
    out = {"data": data, "n": n, "dim": dim, "queries": len(queries), "data_s": time.perf_counter() - t,
           "backends": {}}  # fmt: skip
    exact_scores = None
    for name, cfg in (("exact", IndexConfig()), ("usearch", IndexConfig(kind="usearch", threads=args.index_threads))):
        before = rss_mb()
        store = np.zeros((n, dim), np.float32)  # the store's slot array (the index reads or copies it)
        ids = np.full(n, -1, np.int64)
        index = make_index(cfg, store, ids)
        t = time.perf_counter()
        for s in range(0, n, 1024):
            part = np.arange(s, min(s + 1024, n))
            store[part], ids[part] = vectors[part], part
            index.set(part.tolist())
        add_s = time.perf_counter() - t
        grown = rss_mb() - before
        t = time.perf_counter()
        scores, found = index.search(queries, 10)
        batch_s = time.perf_counter() - t
        p50, p99 = latency_ms(lambda q, index=index: index.search(q, 10), queries[: args.index_latency_queries])
        if name == "exact":
            exact_scores = scores
        row = {
            "add_vectors_per_s": n / add_s,
            "add_s": add_s,
            "query_p50_ms": p50,
            "query_p99_ms": p99,
            "batch_queries_per_s": len(queries) / batch_s,
            "recall_at_10": tie_aware_recall(found, exact_scores, vectors, queries),
            "rss_growth_mb": grown,
            "index_mb": (index._graph.memory_usage / 2**20) if cfg.kind == "usearch" else store.nbytes / 2**20,
            "config": cfg.to_dict(),
        }
        out["backends"][name] = row
        print(f"  {data} {n:>8} {name:8} add {row['add_vectors_per_s']:9.0f}/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
              f"batch {row['batch_queries_per_s']:8.0f} q/s  recall@10 {row['recall_at_10']:.3f}  "
              f"rss +{grown:.0f} MB  index {row['index_mb']:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
        del index, store, ids
    return out


def run_manager_index(args) -> dict:
    """The whole manager at `--index-manager-n` documents: exact vs usearch long-term store (architecture mac)."""
    n = args.index_manager_n
    corpus = make_corpus(n, seed=args.seed)
    embedder = CachedEmbedder(HashingEmbedder(dim=args.index_dim), cache_size=2 * n + 10)
    embedder.encode(corpus.docs)
    questions = [corpus.paraphrases[i] for i in range(0, n, max(1, n // args.index_queries))]
    embedder.encode(questions)
    out, results = {"n": n, "architecture": "mac"}, {}
    for kind in ("exact", "usearch"):
        cfg = LongTermMemoryConfig(index=kind)
        m = TitansManager(embedder, vector_dim=args.index_dim, short_term_size=args.short_term,
                          long_term_size=n + 1024, long_term_config=cfg)  # fmt: skip
        t = time.perf_counter()
        for s in range(0, n, args.batch):
            m.add_documents(corpus.docs[s : s + args.batch])
        add_s = time.perf_counter() - t
        p50, p99 = latency_ms(lambda q, m=m: m.query(questions[int(q[0, 0])], top_k=10),
                              np.arange(min(len(questions), args.index_latency_queries))[:, None])  # fmt: skip
        results[kind] = [[r["id"] for r in rs] for rs in m.query_many(questions, 10)]
        out[kind] = {"add_docs_per_s": n / add_s, "query_p50_ms": p50, "query_p99_ms": p99}
    out["usearch"]["recall_at_10_vs_exact"] = float(np.mean(
        [len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(results["usearch"], results["exact"])]))  # fmt: skip
    print(f"  manager {n}: {out}", file=sys.stderr, flush=True)
    return out


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
    p.add_argument("--part", choices=("recall", "index", "all"), default="all",
                   help="which part to run; the JSON keeps the other part's last results")
    p.add_argument("--index-sets", default="facts:10000:384,facts:100000:384,synthetic:100000:128,"
                   "synthetic:1000000:128", help="data:n:dim, comma-separated (1M facts: embedding alone ~7 min)")
    p.add_argument("--index-dim", type=int, default=384, help="embedding width of the whole-manager comparison")
    p.add_argument("--index-queries", type=int, default=1000)
    p.add_argument("--index-threads", type=int, default=1, help="usearch threads per call (0 = all cores)")
    p.add_argument("--index-latency-queries", type=int, default=300)
    p.add_argument("--index-manager-n", type=int, default=10_000, help="0 = skip the whole-manager comparison")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads(), "note": "2 cores shared with other jobs"}
    if args.part in ("index", "all"):
        t = time.perf_counter()
        old = report.get("index", {})
        sizes = {(r["data"], r["n"], r["dim"]): r for r in old.get("sizes", [])}  # other sets' last results stay
        for spec in filter(None, args.index_sets.split(",")):
            r = run_index(spec, args)
            sizes[(r["data"], r["n"], r["dim"])] = r
            r["settings"] = {k: v for k, v in vars(args).items() if k.startswith("index")}
            report["index"] = {**old, "sizes": list(sizes.values())}
            write_json(out, report)  # after each set: a long run keeps what it finished
        manager = run_manager_index(args) if args.index_manager_n else old.get("manager")
        report["index"] = {"sizes": list(sizes.values()), "manager": manager, "seconds": time.perf_counter() - t}
        print_index_table(report["index"])
        write_json(out, report)
    if args.part == "index":
        print(f"wrote {out}")
        return

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

    report.update({
        "benchmark": "titans.manager recall and throughput",
        "settings": vars(args),
        "embed_docs_per_s": embed_per_s,
        "runs": runs,
    })  # fmt: skip
    write_json(out, report)
    print(f"wrote {out}")


def print_index_table(res: dict) -> None:
    print("\n| data | documents x dim | search | add vectors/s | query p50 ms | query p99 ms | batch queries/s "
          "| recall@10 | RSS growth MB | index MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in res["sizes"]:
        for name, r in size["backends"].items():
            print(f"| {size['data']} | {size['n']:,} x {size['dim']} | {name} | {r['add_vectors_per_s']:,.0f} | "
                  f"{r['query_p50_ms']:.2f} | {r['query_p99_ms']:.2f} | {r['batch_queries_per_s']:,.0f} | "
                  f"{r['recall_at_10']:.3f} | "
                  f"{r['rss_growth_mb']:.0f} | {r['index_mb']:.0f} |")  # fmt: skip
    for size in res["sizes"]:
        print(f"{size['data']} {size['n']:,} x {size['dim']}: data made in {size['data_s']:.0f} s")
    if res.get("manager"):
        m = res["manager"]
        print(f"\nTitansManager (mac), {m['n']:,} documents: exact add {m['exact']['add_docs_per_s']:.0f} docs/s, "
              f"query() p50/p99 {m['exact']['query_p50_ms']:.2f}/{m['exact']['query_p99_ms']:.2f} ms; usearch add "
              f"{m['usearch']['add_docs_per_s']:.0f} docs/s, query() p50/p99 {m['usearch']['query_p50_ms']:.2f}/"
              f"{m['usearch']['query_p99_ms']:.2f} ms, recall@10 vs exact {m['usearch']['recall_at_10_vs_exact']:.3f}")
    print(f"index part: {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()

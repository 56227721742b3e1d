"""MemoryTitan's quick start on the real Titans memory.

    .venv/bin/python examples/memorytitan/quick_start.py [--embedder auto|minilm|hashing] [--architecture mac]
"""

from __future__ import annotations

import argparse

from answer import make_embedder

from titans.manager import TitansManager


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder", choices=("auto", "minilm", "hashing"), default="auto")
    p.add_argument("--architecture", choices=("mac", "mag", "mal", "mem"), default="mac")
    args = p.parse_args(argv)

    titans = TitansManager(
        embedder=make_embedder(args.embedder),
        architecture=args.architecture,  # "mac", "mag", "mal" or "mem" (long-term memory only)
        short_term_size=512,  # the last 512 documents, searched exactly
        long_term_size=2048,  # documents kept by the neural long-term memory
        persistent_size=64,  # task documents you add with memory_type="persistent"
        vector_dim=384,
    )
    titans.add_documents([
        "Transformers are neural network architectures.",
        "The attention mechanism allows models to focus on specific parts of the input.",
        "Long-term memory helps models remember information over extended contexts.",
    ])  # fmt: skip
    results = titans.query("How do transformers work?", top_k=2)
    for r in results:
        print(f"Content: {r['content']}")
        print(f"Score: {r['score']:.3f}")
        print(f"Memory source: {r['source']}")  # short_term, long_term or persistent
        print("---")
    return results


if __name__ == "__main__":
    main()

"""Document QA: split a long document into 1000-character chunks, store them, ask questions.

    .venv/bin/python examples/memorytitan/document_qa.py --file long_document.txt \
        --question "What are the main findings in the document?"

Without --file, a generated document of invented facts is used (and a question about one of them).
Answers come from an OpenAI-compatible endpoint (OPENAI_BASE_URL / OPENAI_MODEL / OPENAI_API_KEY) or
a local patched Qwen3 (TITANS_LOCAL_MODEL); without either the retrieved context is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from answer import answer, format_context, make_embedder

from data_gen.facts import make_corpus
from titans.manager import TitansManager


def chunk(text: str, size: int = 1000) -> list[str]:
    """Consecutive `size`-character chunks, blank ones dropped."""
    return [c for c in (text[i : i + size] for i in range(0, len(text), size)) if c.strip()]


def main(argv: list[str] | None = None) -> tuple[list[dict], str | None]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", type=Path, help="a text file (default: a generated document)")
    p.add_argument("--question", default=None)
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--embedder", choices=("auto", "minilm", "hashing"), default="auto")
    p.add_argument("--architecture", choices=("mac", "mag", "mal", "mem"), default="mac")
    p.add_argument("--short-term-size", type=int, default=8, help="small, so most chunks live in long-term memory")
    p.add_argument("--save", type=Path, help="save the memory here afterwards")
    args = p.parse_args(argv)

    if args.file:
        document = args.file.read_text(encoding="utf-8")
        question = args.question or "What are the main findings in the document?"
    else:
        facts = make_corpus(400, seed=7)
        document = " ".join(facts.docs)
        question = args.question or facts.paraphrases[10]
    chunks = chunk(document, args.chunk_size)
    embedder = make_embedder(args.embedder)
    dim = embedder.dim or embedder.encode(["probe"]).shape[1]
    titans = TitansManager(embedder, architecture=args.architecture, short_term_size=args.short_term_size,
                           vector_dim=dim)  # fmt: skip
    titans.add_documents(chunks, metadatas=[{"chunk": i} for i in range(len(chunks))])
    results = titans.query(question, top_k=args.top_k)
    stats = titans.stats()
    print(f"{len(chunks)} chunks; short-term {stats['short_term']['size']}, long-term {stats['long_term']['size']}")
    print(f"Question: {question}")
    reply = answer(question, results)
    if reply is None:
        print("(no OPENAI_BASE_URL or TITANS_LOCAL_MODEL set: showing the retrieved context)")
        print(format_context(results))
    else:
        print(f"Answer: {reply}")
    if args.save:
        titans.save(args.save)
        print(f"saved the memory to {args.save}")
    return results, reply


if __name__ == "__main__":
    main()

"""Chat with long-term memory: each turn goes to short-term memory, then is consolidated into the
neural long-term memory, so facts from early in a long chat are still found after they left the window.

    .venv/bin/python examples/memorytitan/chat.py                 # interactive (empty line ends)
    .venv/bin/python examples/memorytitan/chat.py --turns "My cat is called Bilo." "What is my cat called?"

Answers come from an OpenAI-compatible endpoint (OPENAI_BASE_URL / OPENAI_MODEL / OPENAI_API_KEY) or
a local patched Qwen3 (TITANS_LOCAL_MODEL); without either the reply lists the recalled memories.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

from answer import answer, make_embedder

from titans.manager import TitansManager


class Chat:
    """A chat whose turns live in a `TitansManager` (user turns, and model replies when a model answers)."""

    def __init__(self, titans: TitansManager, top_k: int = 5) -> None:
        self.titans, self.top_k = titans, top_k
        self.history: list[str] = []

    def turn(self, user_input: str) -> tuple[str, list[dict]]:
        """One exchange: recall, reply, remember. Returns (reply, recalled memories)."""
        self.history.append(f"User: {user_input}")
        recalled = self.titans.query(user_input, top_k=self.top_k) if self.titans.stats()["documents"] else []
        self.titans.add_documents([f"User: {user_input}"], memory_type="short_term")
        reply = answer(user_input, recalled)
        if reply is None:  # no model configured: show what was recalled (and do not remember this echo)
            shown = " | ".join(f"{r['content']} ({r['source']})" for r in recalled[:3])
            reply = f"I remember: {shown}" if recalled else "Noted."
        else:
            self.titans.add_documents([f"Assistant: {reply}"], memory_type="short_term")
        self.history.append(f"Assistant: {reply}")
        self.titans.consolidate_memories()  # important information moves to long-term memory
        return reply, recalled


def _stdin_turns() -> Iterator[str]:
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return
        if not line:
            return
        yield line


def main(argv: list[str] | None = None) -> Chat:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", nargs="*", help="user turns to play (default: read stdin)")
    p.add_argument("--embedder", choices=("auto", "minilm", "hashing"), default="auto")
    p.add_argument("--architecture", choices=("mac", "mag", "mal", "mem"), default="mag")
    p.add_argument("--short-term-size", type=int, default=16)
    p.add_argument("--load", type=Path, help="continue a chat memory saved with --save")
    p.add_argument("--save", type=Path)
    args = p.parse_args(argv)

    embedder = make_embedder(args.embedder)
    dim = embedder.dim or embedder.encode(["probe"]).shape[1]
    titans = TitansManager(embedder, architecture=args.architecture, short_term_size=args.short_term_size,
                           vector_dim=dim)  # fmt: skip
    if args.load:
        titans.load(args.load)
    chat = Chat(titans)
    turns: Iterable[str] = args.turns if args.turns is not None else _stdin_turns()
    for user_input in turns:
        reply, _ = chat.turn(user_input)
        print(f"assistant> {reply}")
    if args.save:
        titans.save(args.save)
    return chat


if __name__ == "__main__":
    main()

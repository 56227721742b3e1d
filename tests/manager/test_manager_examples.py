"""examples/memorytitan: the MemoryTitan README examples run as scripts (hashing embedder, no network, no key)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "memorytitan"
sys.path.insert(0, str(EXAMPLES))

import answer  # noqa: E402
import chat  # noqa: E402
import document_qa  # noqa: E402
import quick_start  # noqa: E402


@pytest.fixture(autouse=True)
def _no_backends(monkeypatch):
    for var in ("OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY", "TITANS_LOCAL_MODEL"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("an example touched the network")

    monkeypatch.setattr(answer.urllib.request, "urlopen", no_network)


def test_quick_start(capsys):
    results = quick_start.main(["--embedder", "hashing"])
    assert results[0]["content"] == "Transformers are neural network architectures."
    assert "Memory source: short_term" in capsys.readouterr().out


def test_document_qa_finds_the_chunk_with_the_fact_in_long_term_memory(capsys, tmp_path):
    doc = tmp_path / "doc.txt"
    filler = " ".join(f"Filler sentence number {i} about nothing in particular." for i in range(300))
    doc.write_text(filler[:6000] + " The Velnor treaty was signed in the harbour town of Quessa. " + filler[6000:])
    save = tmp_path / "qa.safetensors"
    results, reply = document_qa.main(["--embedder", "hashing", "--file", str(doc), "--question",
                                       "Where was the Velnor treaty signed?", "--save", str(save)])  # fmt: skip
    assert reply is None
    assert "Quessa" in results[0]["content"] and results[0]["source"] == "long_term"
    out = capsys.readouterr().out
    assert "showing the retrieved context" in out and "Quessa" in out and save.is_file()


def test_chat_recalls_an_early_fact_after_it_left_short_term_memory(tmp_path):
    save = tmp_path / "chat.safetensors"
    turns = ["My cat is called Bilo.", "I live in Tasvor.", "I like green tea.", "The weather is grey.",
             "What is my cat called?"]  # fmt: skip
    c = chat.main(["--embedder", "hashing", "--short-term-size", "2", "--turns", *turns, "--save", str(save)])
    reply = c.history[-1]
    assert "My cat is called Bilo. (long_term)" in reply
    again = chat.main(["--embedder", "hashing", "--short-term-size", "2", "--load", str(save), "--turns", "cat?"])
    assert "Bilo" in again.history[-1]


def test_openai_request_is_built_from_the_environment(monkeypatch):
    req = answer.build_request("Q?", "[1] ctx", "http://host:1/v1/", "m", "secret")
    assert req.full_url == "http://host:1/v1/chat/completions" and req.get_method() == "POST"
    assert req.get_header("Authorization") == "Bearer secret"
    body = json.loads(req.data)
    assert body["model"] == "m" and "[1] ctx" in body["messages"][1]["content"]
    assert answer.build_request("Q?", "c", "http://h/v1", "m", None).get_header("Authorization") is None

    seen = {}

    def fake_urlopen(request, timeout):
        seen["timeout"], seen["url"] = timeout, request.full_url
        return io.BytesIO(json.dumps({"choices": [{"message": {"content": " Bilo "}}]}).encode())

    monkeypatch.setattr(answer.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://host:1/v1")
    monkeypatch.setenv("OPENAI_MODEL", "m")
    monkeypatch.setenv("OPENAI_TIMEOUT", "7")
    results = [{"content": "My cat is Bilo", "score": 0.9, "source": "long_term"}]
    assert answer.answer("cat?", results) == "Bilo" and seen == {"timeout": 7.0, "url": "http://host:1/v1/chat/completions"}

    monkeypatch.setattr(answer.urllib.request, "urlopen", lambda request, timeout: io.BytesIO(b'{"oops": 1}'))
    with pytest.raises(RuntimeError, match="unexpected response"):
        answer.answer("cat?", results)
    monkeypatch.delenv("OPENAI_MODEL")
    with pytest.raises(RuntimeError, match="OPENAI_MODEL"):
        answer.answer("cat?", results)

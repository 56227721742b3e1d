"""Training data: generated samples (data_gen) -> token ids, labels and answer masks, in fixed batches.

A batch is a dict:
    input_ids    `[B, T]` long    prompt + completion tokens, right-padded with the pad id
    labels       `[B, T]` long    the token at each position where it is a loss target, -100 elsewhere
                                  (HF convention: logits at t-1 predict labels at t); `loss_on="answer"`
                                  keeps only the answer (completion) tokens, "all" every real token
    answer_mask  `[B, T]` bool    completion tokens (scored by answer accuracy whatever `loss_on` says)
    index        `[B]` long       global sample index (the stream position)
Right padding never changes what real tokens see (attention and memory are causal).

Train batches come from an endless, seeded stream (`SampleStream`): sample i is `mixture.sample(i)`
(or sample i mod n of a dataset written by `python -m data_gen`), so batch b of rank r holds samples
`(b * world + r) * B + j` and a resumed run continues at the batch it stopped at. Validation
samples come from data_gen's `split="eval"` seed namespace, disjoint from training.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

LOSS_ON = ("answer", "all")


@dataclass
class EncodedSample:
    """One tokenised sample. `answer_mask[t]` is True on completion tokens."""

    input_ids: list[int]
    answer_mask: list[bool]
    task: str = ""


def encode_sample(sample: dict, tokenizer=None) -> EncodedSample:
    """Token ids of `input + completion` and the completion mask (data_gen's teacher-forcing split).

    `tokenizer` None or the byte tokenizer: ids are UTF-8 bytes (fast path, same ids as
    `titans.tokenizers.byte_tokenizer()`).
    """
    import data_gen
    from titans.tokenizers import is_byte_tokenizer

    tok = None if tokenizer is None or is_byte_tokenizer(tokenizer) else tokenizer
    ids, labels = data_gen.to_token_ids(sample, tok)
    return EncodedSample(list(ids), [lab != -100 for lab in labels], sample.get("task", ""))


def collate(samples: Sequence[EncodedSample], pad_id: int, seq_len: int | None = None, loss_on: str = "answer",
            indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to `seq_len` (None: the longest sample) and build labels; see the module docstring."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"data.loss_on={loss_on!r} is not allowed; allowed: {LOSS_ON}.")
    longest = max(len(s.input_ids) for s in samples)
    T = longest if seq_len is None else seq_len
    if longest > T:
        raise ValueError(f"a {samples[0].task or 'sample'} sample has {longest} tokens but data.seq_len={seq_len}; "
                         f"raise data.seq_len or lower the generated lengths (data.train.lengths).")
    B = len(samples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    answer_mask = torch.zeros((B, T), dtype=torch.bool)
    for b, s in enumerate(samples):
        n = len(s.input_ids)
        ids = torch.tensor(s.input_ids, dtype=torch.long)
        mask = torch.tensor(s.answer_mask, dtype=torch.bool)
        input_ids[b, :n] = ids
        answer_mask[b, :n] = mask
        keep = mask if loss_on == "answer" else torch.ones(n, dtype=torch.bool)
        keep[0] = False  # nothing predicts the first token
        labels[b, :n] = torch.where(keep, ids, torch.full_like(ids, -100))
    index = torch.tensor(list(indices) if indices is not None else range(B), dtype=torch.long)
    return {"input_ids": input_ids, "labels": labels, "answer_mask": answer_mask, "index": index}


class SampleStream(IterableDataset):
    """Endless stream of collated batches: batch b (b >= start_batch) of this rank, see the module docstring.

    Args:
        sample_fn: global index -> sample dict (e.g. `Mixture.sample`).
        tokenizer: the model's tokenizer (None = bytes).
        batch_size, seq_len, loss_on, pad_id: as in `collate`.
        rank, world_size: data-parallel position; start_batch: first batch (resume).
    DataLoader workers split batches round-robin (worker w makes batches b = w mod W), which is the
    order the DataLoader reads them in, so the stream is the same for any `num_workers`.
    """

    def __init__(self, sample_fn: Callable[[int], dict], tokenizer, batch_size: int, seq_len: int | None,
                 pad_id: int, loss_on: str = "answer", rank: int = 0, world_size: int = 1, start_batch: int = 0):
        super().__init__()
        self.sample_fn, self.tokenizer = sample_fn, tokenizer
        self.batch_size, self.seq_len, self.pad_id, self.loss_on = batch_size, seq_len, pad_id, loss_on
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        first = (b * self.world_size + self.rank) * self.batch_size
        idx = list(range(first, first + self.batch_size))
        enc = [encode_sample(self.sample_fn(i), self.tokenizer) for i in idx]
        return collate(enc, self.pad_id, self.seq_len, self.loss_on, idx)

    def __iter__(self):
        info = get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start_batch + w
        while True:
            yield self.batch(b)
            b += W


class EncodedDataset(Dataset):
    """A fixed list of samples (validation), encoded once."""

    def __init__(self, samples: Sequence[dict], tokenizer=None):
        self.items = [encode_sample(s, tokenizer) for s in samples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, EncodedSample]:
        return i, self.items[i]


def cycled(samples: Sequence[dict], seed: int = 0) -> Callable[[int], dict]:
    """index -> sample for a finite dataset: epoch e = i // n is a seeded permutation of the samples."""
    n = len(samples)
    if n == 0:
        raise ValueError("data.train.path holds no samples; write some with `python -m data_gen ...`.")
    perms: dict[int, list[int]] = {}

    def fn(i: int) -> dict:
        epoch = i // n
        if epoch not in perms:
            order = list(range(n))
            random.Random(f"{seed}/{epoch}").shuffle(order)
            perms.clear()
            perms[epoch] = order
        return samples[perms[epoch][i % n]]

    return fn


@dataclass
class DataConfig:
    """What `TitansDataModule` draws (conf/data/*.yaml).

    train: a `data_gen.Mixture` config (components, lengths, length_weights, seed) or {"path": DIR}
        of a dataset written by `python -m data_gen`. val: the same plus `n` (samples; split "eval").
    seq_len: padded length of every batch (None: longest sample of the batch).
    """

    train: dict = field(default_factory=lambda: {"components": [{"task": "passkey"}], "lengths": [512]})
    val: dict | None = None
    seq_len: int | None = 512
    batch_size: int = 4
    val_batch_size: int | None = None
    loss_on: str = "answer"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"data.loss_on={self.loss_on!r} is not allowed; allowed: {LOSS_ON}.")
        for key in ("batch_size", "num_workers"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < (1 if key == "batch_size" else 0):
                raise ValueError(f"data.{key}={value!r} is not allowed; it must be an int >= "
                                 f"{1 if key == 'batch_size' else 0}.")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise ValueError(f"data.seq_len={self.seq_len!r} is not allowed; allowed: null or an int >= 2.")
        for name, part in (("train", self.train), ("val", self.val)):
            if part is None:
                continue
            lengths = [*(part.get("lengths") or []), *(x for c in part.get("components", []) for x in
                                                     (c.get("lengths") or []))]
            if self.seq_len is not None and lengths and max(lengths) > self.seq_len:
                raise ValueError(f"data.{name}.lengths go up to {max(lengths)} but data.seq_len={self.seq_len}; "
                                 f"every generated sample must fit: raise data.seq_len or lower the lengths.")

    @classmethod
    def from_mapping(cls, cfg: Mapping) -> DataConfig:
        from dataclasses import fields

        cfg = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"data has unknown key(s) {unknown}; allowed: {sorted(known)}.")
        return cls(**cfg)


def _source(part: dict, split: str, tokenizer) -> tuple[Callable[[int], dict], dict]:
    """(index -> sample, remaining options) for a train/val part of DataConfig."""
    part = dict(part)
    path = part.pop("path", None)
    n = part.pop("n", None)
    if path:
        from data_gen import io

        try:
            samples = io.load(path)
        except ValueError as e:
            raise ValueError(f"data.{'train' if split == 'train' else 'val'}.path={path!r}: {e}. Write it with "
                             f"`python -m data_gen task=... out={path}`.") from e
        return cycled(samples, int(part.get("seed", 0))), {"n": n}
    from data_gen import Mixture

    part.setdefault("split", split)
    if part["split"] != split:
        raise ValueError(f"data.{'train' if split == 'train' else 'val'}.split={part['split']!r}: training data must "
                         f"use split 'train' and validation data split 'eval' (disjoint seeds); remove the key.")
    mixture = Mixture.from_config(part, tokenizer=tokenizer)
    return mixture.sample, {"n": n}


class TitansDataModule:
    """Builds the train stream and the validation loader.

    Kept free of Lightning so it can be used in plain loops; `titans.training.run.LitData` wraps it for a Trainer.
    """

    def __init__(self, config: DataConfig, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither pad_token_id nor eos_token_id; set one (padding needs it).")
        self.pad_id = int(pad)
        self._train_fn, _ = _source(config.train, "train", tokenizer)
        self._val = None
        if config.val is not None:
            val_fn, opts = _source(config.val, "eval", tokenizer)
            n = opts["n"] or 16
            self._val = EncodedDataset([val_fn(i) for i in range(n)], tokenizer)

    def train_stream(self, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> SampleStream:
        c = self.config
        return SampleStream(self._train_fn, self.tokenizer, c.batch_size, c.seq_len, self.pad_id, c.loss_on,
                            rank, world_size, start_batch)

    def train_loader(self, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
        return DataLoader(self.train_stream(start_batch, rank, world_size), batch_size=None,
                          num_workers=self.config.num_workers, persistent_workers=False)

    def val_loader(self) -> DataLoader | None:
        if self._val is None:
            return None
        c = self.config

        def fn(items):
            return collate([s for _, s in items], self.pad_id, c.seq_len, c.loss_on, [i for i, _ in items])

        return DataLoader(self._val, batch_size=c.val_batch_size or c.batch_size, shuffle=False, collate_fn=fn,
                          num_workers=0)

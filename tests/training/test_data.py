import pytest
import torch

from titans.tokenizers import byte_tokenizer
from titans.training.data import DataConfig, TitansDataModule, collate, encode_sample

MIX = {"components": [{"task": "passkey"}, {"task": "hashhop"}], "lengths": [320], "seed": 0}


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_labels_answer_mask_and_padding(tok):
    import data_gen

    sample = data_gen.generate("passkey", 1, 300, seed=0)[0]
    enc = encode_sample(sample, tok)
    assert bytes(enc.input_ids).decode() == sample["input"] + sample["meta"]["completion"]
    n_ans = sum(enc.answer_mask)
    assert n_ans == len(sample["meta"]["completion"].encode()) and all(enc.answer_mask[-n_ans:])
    batch = collate([enc], pad_id=256, seq_len=320, loss_on="answer")
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["answer_mask"][0]
    n = len(enc.input_ids)
    assert ids.shape == (320,) and (ids[n:] == 256).all() and (labels[n:] == -100).all()
    assert torch.equal(labels != -100, mask) and torch.equal(labels[mask], ids[mask])
    all_tokens = collate([enc], pad_id=256, seq_len=None, loss_on="all")["labels"][0]
    assert all_tokens.shape == (n,) and all_tokens[0] == -100 and (all_tokens[1:] != -100).all()
    with pytest.raises(ValueError, match=r"data.seq_len=10"):
        collate([enc], pad_id=256, seq_len=10)
    with pytest.raises(ValueError, match="data.loss_on='some'"):
        collate([enc], pad_id=256, loss_on="some")


def test_stream_is_sharded_resumable_and_worker_independent(tok):
    dm = TitansDataModule(DataConfig(train=MIX, val=None, seq_len=320, batch_size=2), tok)
    one = [b["index"].tolist() for _, b in zip(range(3), dm.train_stream())]
    assert one == [[0, 1], [2, 3], [4, 5]]
    rank1 = next(iter(dm.train_stream(rank=1, world_size=2)))["index"].tolist()
    assert rank1 == [2, 3]  # batch 0 of rank 1 in a world of 2
    resumed = next(iter(dm.train_stream(start_batch=2)))
    first = dm.train_stream().batch(2)
    assert torch.equal(resumed["input_ids"], first["input_ids"])
    loader = DataConfig(train=MIX, val=None, seq_len=320, batch_size=2, num_workers=2)
    got = [b["index"].tolist() for _, b in zip(range(3), TitansDataModule(loader, tok).train_loader())]
    assert got == one


def test_validation_uses_the_eval_split_and_disk_datasets_load(tok, tmp_path):
    import data_gen
    from data_gen import io

    dm = TitansDataModule(DataConfig(train=MIX, val={**MIX, "n": 3}, seq_len=320, batch_size=2), tok)
    val = next(iter(dm.val_loader()))
    train = dm.train_stream().batch(0)
    assert val["input_ids"].shape[0] == 2 and not torch.equal(val["input_ids"], train["input_ids"])
    samples = data_gen.generate("passkey", 3, 300, seed=0)
    io.write(samples, tmp_path / "ds", {"task": "passkey"})
    disk = TitansDataModule(DataConfig(train={"path": str(tmp_path / "ds")}, val=None, seq_len=None, batch_size=3),
                            tok)
    batch = disk.train_stream().batch(0)
    got = sorted(bytes(r[r != 256].tolist()).decode() for r in batch["input_ids"])
    assert got == sorted(s["input"] + s["meta"]["completion"] for s in samples)  # an epoch is a permutation
    with pytest.raises(ValueError, match="data.train.path="):
        TitansDataModule(DataConfig(train={"path": str(tmp_path / "missing")}, val=None), tok)


def test_data_config_errors():
    with pytest.raises(ValueError, match=r"data.train.lengths go up to 1024 but data.seq_len=512"):
        DataConfig(train={**MIX, "lengths": [1024]}, seq_len=512)
    with pytest.raises(ValueError, match=r"data has unknown key\(s\) \['bach_size'\]"):
        DataConfig.from_mapping({"bach_size": 3})
    with pytest.raises(ValueError, match="data.batch_size=0"):
        DataConfig(batch_size=0)

"""benchmarks.diagnose: the memory's survival, θ/α, reads and keys on long prompts, held to a direct forward."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import data_gen
from benchmarks.diagnose import bigram_copies, diagnose, diagnose_sample, locate
from data_gen.common import Counter
from data_gen.hashhop import LINK_RE
from titans.compat import output_cache
from titans.training.builders import build_model, to_plain
from titans.training.checkpoint import model_arch

CONF = str(Path(__file__).resolve().parents[2] / "conf")
SMALL = ["model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_attention_heads=2",
         "model.arch.num_key_value_heads=1", "model.arch.head_dim=16", "memory.window=16",
         "memory.memory.chunk_size=8", "segment_len=64", "haystack_probes=16"]


@pytest.fixture(scope="module")
def base_cfg():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return to_plain(compose("diagnose", overrides=SMALL))


def diag_cfg(base, tmp_path, **changes):
    cfg = copy.deepcopy(base)
    cfg["paths"]["output_dir"] = str(tmp_path)
    cfg.update(changes)
    return cfg


def test_survival_and_read_equal_a_direct_forward(tmp_path, base_cfg):
    """Known answer: the streamed diagnosis (segments of 64, the read teacher-forced on a copy of the cache) equals
    Π(1 − α) and cos(read, value) computed from one forward over the whole prompt with output_memory_aux."""
    cfg = diag_cfg(base_cfg, tmp_path)
    model, tok = build_model(cfg["model"], cfg["memory"])
    model.eval()
    sample = next(data_gen.iter_samples("hashhop", 1, 400, 0, Counter(tok), split="eval", hops=1, n_pairs=2,
                                        intro=False))
    rec = diagnose_sample(model, tok, sample, segment_len=64, haystack_probes=8)
    layer = rec["layers"]["0"]
    spans = locate(sample, Counter(tok))
    ids = tok(sample["input"], add_special_tokens=False)["input_ids"]
    comp = tok(sample["meta"]["completion"], add_special_tokens=False)["input_ids"]
    T, n = len(ids), len(comp)
    with torch.no_grad():
        out = model(torch.tensor([ids + comp[:-1]]), use_cache=True, output_memory_aux=True)
    aux = output_cache(out).memory_aux[0][0].memory
    alpha = aux["forget"][0].double()  # (H, T + n - 1)
    want = torch.prod(1 - alpha[:, spans.needle[1]:T], dim=1).log10()  # from the needle's last token to T-1
    assert spans.needle[1] < T - 50  # a real stretch of haystack between them
    assert layer["log10_survival"] == pytest.approx(float(want.max()), rel=1e-5, abs=1e-7)
    assert layer["log10_survival_heads"] == pytest.approx(want.tolist(), abs=1e-5)
    a0 = spans.answer[0]
    cos = F.cosine_similarity(aux["retrieved"][0, :, T - 1:T - 1 + n], aux["values"][0, :, a0:a0 + n], dim=-1)
    assert layer["read_cos"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert layer["read_cos_tokens"] == pytest.approx(cos.mean(0).tolist(), abs=1e-4) and len(cos[0]) == n == 7
    keys = aux["keys"][0]
    distractor_keys = [float(F.cosine_similarity(keys[:, a0], keys[:, d0], dim=-1).mean())
                       for d0, _ in spans.distractors]
    assert len(distractor_keys) == 2 and layer["key_cos_distractor"] == pytest.approx(max(distractor_keys), abs=1e-5)
    after = spans.haystack.clone()
    after[:spans.needle[1]] = False  # haystack written after the needle
    later = F.cosine_similarity(keys[:, :T][:, after], keys[:, a0, None], dim=-1).mean(0)
    assert layer["key_cos_after_max"] == pytest.approx(float(later.max()), abs=1e-5)
    assert layer["key_collisions"] == int((later >= 0.9).sum())
    assert rec["correct"] == (sample["answer"] in rec["prediction"])
    others = sorted(b for _, b in LINK_RE.findall(sample["input"]) if b != sample["answer"])
    assert len(others) == 2 and sorted(spans.distractor_answers) == others
    assert sorted(tok.decode(ids[s:e]) for s, e in spans.distractors) == [" " + b for b in others]
    assert tok.decode(ids[spans.answer[0]:spans.answer[1]]) == " " + sample["answer"]
    assert rec["answered_distractor"] == any(b in rec["prediction"] for b in others)
    assert rec["chars_like_answer"] == sum(a == b for a, b in zip(rec["prediction"].strip(), sample["answer"])) / 6
    assert (rec["wrong_chars"], rec["wrong_chars_bigram"], rec["wrong_chars_bigram_chance"]) == bigram_copies(
        rec["prediction"], sample["answer"], others)


def test_bigram_copies_count_wrong_characters_that_continue_a_distractors_bigram():
    """Known answers: "731d4e" answered "7e1d4e" beside a distractor "f7e6ac" copies the bigram "7e" (1 of 1 wrong);
    a wrong character no distractor continues that way is wrong but not copied; the first character is not counted."""
    assert bigram_copies(" 7e1d4e", "731d4e", ["f7e6ac", "000000"])[:2] == (1, 1)
    wrong, copied, chance = bigram_copies("7e1d4e", "731d4e", ["f7b6ac"])
    assert (wrong, copied) == (1, 0) and chance == pytest.approx(1 / 15)  # "7" is followed by "b" in one distractor
    assert bigram_copies("831d4e", "731d4e", ["f7e6ac"]) == (0, 0, 0.0)  # only the first character is wrong
    assert bigram_copies("7", "731d4e", ["f7e6ac"]) == (0, 0, 0.0)  # a short answer: nothing to compare


def test_diagnose_a_checkpoint_writes_json_and_png_at_each_length(tmp_path, base_cfg):
    """The checkpoint's weights are the ones diagnosed: its forget gate is fixed at α = σ(-2) for every token, so
    the survival is exactly (needle-to-question tokens) · log10(1 − σ(-2))."""
    cfg = diag_cfg(base_cfg, tmp_path / "out", checkpoint=str(tmp_path / "tiny.ckpt"), lengths=[300, 700])
    model, _ = build_model(cfg["model"], cfg["memory"])
    for layer in model.model.layers:  # to_gates rows: θ | η | α, one per head
        gates = layer.memory.to_gates
        heads = gates.out_features // 3
        with torch.no_grad():
            gates.weight[2 * heads:] = 0.0
            gates.bias[2 * heads:] = -2.0
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "titans": {"arch": model_arch(model)}}, ckpt)
    result = diagnose(cfg)
    saved = json.loads((tmp_path / "out" / "diagnose.json").read_text())
    assert (tmp_path / "out" / "diagnose.png").stat().st_size > 10_000
    assert saved["lengths"] == [300, 700] and set(saved["summary"]) == {"passkey", "hashhop_pairs2"}
    assert all(set(rows) == {"300", "700"} for rows in saved["summary"].values())
    assert result["memory_layers"] == saved["memory_layers"] == [0, 1]
    for rec in saved["records"]:
        assert rec["length"] - 32 <= rec["tokens"] <= rec["length"]  # the answer budget is part of the length
        assert {"answer", "prediction", "correct", "needle_depth", "spans"} <= set(rec)
        for layer in rec["layers"].values():
            steps = rec["tokens"] - rec["spans"]["needle"][1]
            assert layer["log10_survival"] == pytest.approx(steps * math.log10(1 - torch.sigmoid(torch.tensor(-2.0))),
                                                            rel=1e-4)
            assert layer["forget_needle"] == pytest.approx(float(torch.sigmoid(torch.tensor(-2.0))), rel=1e-5)
            assert layer["weight_norm"] and all(len(p) == 2 for p in layer["weight_norm"])
            for key in ("lr_needle", "lr_haystack", "forget_haystack", "read_cos", "read_cos_haystack", "read_rank",
                        "query_key_cos"):
                assert isinstance(layer[key], int | float), key
            if rec["prompt"] == "hashhop_pairs2":
                assert rec["n_distractors"] == 2 and isinstance(layer["key_cos_distractor"], float)
                assert isinstance(layer["read_cos_distractor"], float)
    row = saved["summary"]["hashhop_pairs2"]["700"]
    assert 0 <= row["accuracy"] <= 100 and "layer0/log10_survival" in row and "layer0/key_cos_distractor" in row


NO_MEMORY = {"name": "none", "variant": None, "window": None}


@pytest.mark.parametrize("changes, match", [
    (dict(prompts=["nope"]), r"prompts has unknown name\(s\) \['nope'\]; allowed"),
    (dict(lengths=[]), r"lengths=\[\] is not allowed"),
    (dict(prompts=["bad"], prompt_specs={"bad": {"task": "passkey", "params": {"colour": "red"}}}),
     r"unknown parameter\(s\) \['colour'\]"),
    (dict(memory=NO_MEMORY), r"memory='none'.*no memory layer"),
], ids=["unknown-prompt", "no-lengths", "bad-task-param", "no-memory"])
def test_bad_options_are_clear_errors(tmp_path, base_cfg, changes, match):
    with pytest.raises(ValueError, match=match):
        diagnose(diag_cfg(base_cfg, tmp_path, **{"lengths": [300], **changes}))

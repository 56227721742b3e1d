import json
import re

import pytest
import torch

import benchmarks.runner as runner
import benchmarks.suites.base as suite_base
from benchmarks.inference import Generation
from benchmarks.runner import run_suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def oracle(right_every: int = 1):
    """A stand-in for greedy decoding that reads the gold answer from the prompt (the pass key, or
    RULER's value after "is: "); wrong on every sample whose call number is not a multiple of right_every."""
    calls = {"n": 0, "ids": []}

    def fake(model, tokenizer, ids, *, segment_len, max_new_tokens, stop):
        calls["n"] += 1
        calls["ids"].append(list(ids))
        text = tokenizer.decode(ids)
        m = re.search(r"The pass key is (\d+)\.", text) or re.search(r"is: ([\w-]+)\.", text)
        answer = m.group(1) if m and calls["n"] % right_every == 0 else "zzz"
        return Generation(" " + answer, [0], "stop")

    return fake, calls


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_passkey_end_to_end_on_the_tiny_model(model, tok, tmp_path):
    s = run_suite(model, tok, "passkey", lengths=[300, 400], samples=2, output_dir=tmp_path, segment_len=64,
                  progress=False)
    recs = lines(tmp_path / "samples.jsonl")
    assert len(recs) == 4 and {r["length"] for r in recs} == {300, 400}
    for r in recs:
        assert r["input_tokens"] <= r["length"] and r["score"] in (0.0, 1.0) and r["answer"].isdigit()
        assert r["stopped_by"] in ("stop", "eos", "max_new_tokens") and 1 <= r["new_tokens"] <= 6
    assert set(s["table"]["passkey"]) == {300, 400}
    for name in ("summary.json", "summary.csv", "results.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "passkey.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "summary.json").read_text())["table"]["passkey"]["300"] == s["table"]["passkey"][300]


def test_scores_aggregate_per_cell(model, tok, tmp_path, monkeypatch):
    fake, calls = oracle(right_every=2)
    monkeypatch.setattr(suite_base, "greedy_answer", fake)
    s = run_suite(model, tok, "passkey", lengths=[300], samples=4, output_dir=tmp_path, progress=False)
    assert calls["n"] == 4
    assert s["table"]["passkey"][300] == 50.0
    assert s["cells"][0]["n"] == 4 and s["cells"][0]["empty"] == 0


def test_resume_skips_finished_samples_and_survives_a_torn_line(model, tok, tmp_path, monkeypatch):
    fake, calls = oracle()
    monkeypatch.setattr(suite_base, "greedy_answer", fake)
    run_suite(model, tok, "passkey", lengths=[300, 400], samples=2, output_dir=tmp_path, progress=False)
    assert calls["n"] == 4
    s = run_suite(model, tok, "passkey", lengths=[300, 400], samples=2, output_dir=tmp_path, progress=False)
    assert calls["n"] == 4, "a finished cell was recomputed"
    assert s["table"]["passkey"] == {300: 100.0, 400: 100.0}
    path = tmp_path / "samples.jsonl"
    keep = path.read_text().splitlines()[:3]
    path.write_text("\n".join(keep) + '\n{"suite": "passkey", "cel')  # killed mid-write
    run_suite(model, tok, "passkey", lengths=[300, 400], samples=3, output_dir=tmp_path, progress=False)
    assert calls["n"] == 4 + 1 + 2, "only the lost sample and the new third samples should run"
    s = run_suite(model, tok, "passkey", lengths=[300], samples=1, output_dir=tmp_path, progress=False)
    assert calls["n"] == 7 and s["cells"][0]["n"] == 1, "fewer samples: a subset of the finished ones"
    # other settings (another model name) do not reuse the records
    run_suite(model, tok, "passkey", lengths=[300], samples=1, output_dir=tmp_path, progress=False, model_name="other")
    assert calls["n"] == 8
    # the same name with other weights (e.g. after more training) does not reuse them either
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    try:
        run_suite(model, tok, "passkey", lengths=[300], samples=1, output_dir=tmp_path, progress=False)
        assert calls["n"] == 9, "answers of other weights were reused"
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1e-3)


def test_torn_last_line_keeps_the_recomputed_record(model, tok, tmp_path, monkeypatch):
    fake, calls = oracle()
    monkeypatch.setattr(suite_base, "greedy_answer", fake)
    run_suite(model, tok, "passkey", lengths=[300], samples=2, output_dir=tmp_path, progress=False)
    path = tmp_path / "samples.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n" + second[: len(second) // 2])  # killed mid-write of the second record
    run_suite(model, tok, "passkey", lengths=[300], samples=2, output_dir=tmp_path, progress=False)
    assert calls["n"] == 3, "the torn sample must be recomputed"
    recs = lines(path)  # every line is a whole record: none was glued onto the fragment
    assert sorted(r["index"] for r in recs) == [0, 1] and path.read_text().endswith("\n")
    s = run_suite(model, tok, "passkey", lengths=[300], samples=2, output_dir=tmp_path, progress=False)
    assert calls["n"] == 3, "the recomputed record was lost"
    assert s["table"]["passkey"][300] == 100.0 and s["cells"][0]["n"] == 2
    # a complete last record that only lacks its newline is kept, not recomputed
    path.write_text(path.read_text().rstrip("\n"))
    run_suite(model, tok, "passkey", lengths=[300], samples=2, output_dir=tmp_path, progress=False)
    assert calls["n"] == 3 and len(lines(path)) == 2


def test_variation_rows_run_through_the_real_inference_path(model, tok, tmp_path):
    """The issue-14 cells as rows of the passkey / hashhop suites, streamed and greedy-decoded by the tiny model."""
    rows = {"hashhop": {}, "hashhop_pairs8": {"n_pairs": 8}, "hashhop_essay": {"haystack": "essay"}}
    s = run_suite(model, tok, "hashhop", lengths=[700], samples=1, segment_len=128, output_dir=tmp_path / "h",
                  progress=False, task_params={"intro": False}, rows=rows)
    assert list(s["table"]) == list(rows) and all(r[700] in (0.0, 100.0) for r in s["table"].values())
    recs = {r["row"]: r for r in lines(tmp_path / "h" / "samples.jsonl")}
    assert len(recs["hashhop_pairs8"]["depths"]) == 9 and len(recs["hashhop"]["depths"]) == 1  # query + 8 pairs
    assert all(r["input_tokens"] <= 700 and r["new_tokens"] >= 1 for r in recs.values())
    s = run_suite(model, tok, "passkey", lengths=[700], samples=1, segment_len=128, output_dir=tmp_path / "p",
                  progress=False, task_params={"intro": False}, rows={"passkey": {}, "passkey_essay": {"haystack":
                                                                                                   "essay"}})
    assert list(s["table"]) == ["passkey", "passkey_essay"]
    with pytest.raises(ValueError, match="rows.x sets \\['hops'\\].*benchmark.hops"):
        run_suite(model, tok, "hashhop", lengths=[700], samples=1, output_dir=tmp_path / "e", progress=False,
                  rows={"x": {"hops": 2}})


def test_niah_grid_heatmap(model, tok, tmp_path, monkeypatch):
    fake, _ = oracle()
    monkeypatch.setattr(suite_base, "greedy_answer", fake)
    s = run_suite(model, tok, "niah", lengths=[600, 1000], samples=1, depths=[0, 50, 100], output_dir=tmp_path,
                  progress=False)
    assert list(s["table"]) == ["0", "50", "100"]
    assert all(v == 100.0 for row in s["table"].values() for v in row.values())
    recs = lines(tmp_path / "samples.jsonl")
    by_depth = {r["depth"]: r["depths"][0] for r in recs if r["length"] == 1000}
    assert by_depth[0] < 0.2 < by_depth[50] < 0.8 < by_depth[100]  # the needle sits where the grid says
    png = (tmp_path / "niah.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 2000
    assert "| depth (%) |" in (tmp_path / "results.md").read_text()


RULER_S1_PREFIX = ("A special magic number is hidden within the following text. Make sure to memorize it. "
                   "I will quiz you about the number afterwards.\n")
RULER_S1_SUFFIX = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
                   "The special magic number for {key} mentioned in the provided text is")
RULER_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def test_sniah_pk_prompt_is_rulers_niah_single_1(model, tok, tmp_path, monkeypatch):
    fake, calls = oracle()
    monkeypatch.setattr(suite_base, "greedy_answer", fake)
    s = run_suite(model, tok, "sniah", lengths=[600], samples=1, columns=["PK"], output_dir=tmp_path, progress=False)
    prompt = tok.decode(calls["ids"][0])
    key, value = re.search(r"One of the special magic numbers for (\S+) is: (\d{7})\.", prompt).groups()
    assert prompt.startswith(RULER_S1_PREFIX)
    assert prompt.endswith(RULER_S1_SUFFIX.format(key=key))
    body = prompt[len(RULER_S1_PREFIX):-len(RULER_S1_SUFFIX.format(key=key))].split("\n")
    needle = f"One of the special magic numbers for {key} is: {value}."
    assert body.count(needle) == 1 and set(body) == {RULER_NOISE, needle}
    assert len(calls["ids"][0]) + 128 <= 600  # RULER: input + tokens_to_generate fits the length
    rec = lines(tmp_path / "samples.jsonl")[0]
    assert rec["answer"] == [value] and s["table"]["PK"][600] == 100.0
    assert "| model | PK 600 |\n|---|---:|\n| model | 100.0 |" in (tmp_path / "results.md").read_text()


def test_ruler_average_and_effective_length(model, tok, tmp_path, monkeypatch):
    fake, _ = oracle()
    monkeypatch.setattr(suite_base, "greedy_answer", fake)
    s = run_suite(model, tok, "ruler", lengths=[600, 700], samples=1, tasks=["niah_single_1", "niah_single_3"],
                  output_dir=tmp_path, progress=False)
    assert s["table"]["niah_single_1"] == {600: 100.0, 700: 100.0}
    assert s["average"] == {600: 100.0, 700: 100.0}
    assert s["effective_length"] == 700
    assert "Effective length" in (tmp_path / "results.md").read_text()


def test_ruler_multi_answer_task_is_scored_with_string_match_all(model, tok, tmp_path, monkeypatch):
    """niah_multivalue has 4 values per key; an answer naming one of them scores 25% under RULER's `all`
    (100% under `part`). The cell's number is `scoring.string_match_all` of its predictions."""
    from benchmarks import scoring

    fake, _ = oracle()  # answers the first value of the prompt only
    monkeypatch.setattr(suite_base, "greedy_answer", fake)
    s = run_suite(model, tok, "ruler", lengths=[900], samples=2, tasks=["niah_multivalue", "niah_single_1"],
                  output_dir=tmp_path, progress=False)
    recs = lines(tmp_path / "samples.jsonl")
    multi = [r for r in recs if r["task"] == "niah_multivalue"]
    assert all(len(r["answer"]) == 4 and r["score"] == 0.25 for r in multi)
    assert s["table"]["niah_multivalue"][900] == 25.0
    assert s["table"]["niah_multivalue"][900] == scoring.string_match_all([r["prediction"] for r in multi],
                                                                          [r["answer"] for r in multi])
    assert s["table"]["niah_multivalue"][900] != scoring.string_match_part([r["prediction"] for r in multi],
                                                                           [r["answer"] for r in multi])
    assert s["table"]["niah_single_1"][900] == 100.0 and s["average"][900] == 62.5


@pytest.mark.parametrize("suite, kwargs, match", [
    ("nope", {}, "unknown benchmark 'nope'.*allowed"),
    ("passkey", {"lengths": [8]}, "length too small"),
    ("passkey", {"depths": [1]}, "no option.*depths.*allowed"),
    ("passkey", {"lengths": []}, "benchmark.lengths"),
    ("ruler", {"tasks": ["qa_1"]}, "tasks.*qa_1.*allowed"),
    ("niah", {"depths": [150]}, "depths"),
], ids=["unknown-suite", "length-below-template", "unknown-option", "no-lengths", "unknown-task", "bad-depth"])
def test_bad_input_is_a_clear_error(model, tok, tmp_path, suite, kwargs, match):
    kwargs.setdefault("samples", 1)
    with pytest.raises(ValueError, match=match):
        run_suite(model, tok, suite, output_dir=tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "samples.jsonl").exists() or not (tmp_path / "samples.jsonl").read_text()


def test_ppl_buckets_and_resume(model, tok, tmp_path):
    s = run_suite(model, tok, "ppl", lengths=[128, 256], samples=2, output_dir=tmp_path, segment_len=64,
                  progress=False, first_bucket=32)
    assert list(s["table"]) == ["0-32", "32-64", "64-128", "128-256"]
    assert s["table"]["128-256"][128] is None and s["table"]["128-256"][256] > 1
    assert 50 < s["by_length"][256] < 2 * len(tok)  # a random model: near-uniform perplexity
    assert (tmp_path / "ppl.png").read_bytes()[:8] == PNG_MAGIC
    before = (tmp_path / "samples.jsonl").read_text()
    s2 = run_suite(model, tok, "ppl", lengths=[128, 256], samples=2, output_dir=tmp_path, segment_len=64,
                   progress=False, first_bucket=32)
    assert (tmp_path / "samples.jsonl").read_text() == before and s2["table"] == s["table"]
    # records written before ppl was a Suite carry no "cell": they are still found
    old = [{k: v for k, v in r.items() if k != "cell"} for r in lines(tmp_path / "samples.jsonl")]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    s3 = run_suite(model, tok, "ppl", lengths=[128, 256], samples=2, output_dir=tmp_path, segment_len=64,
                   progress=False, first_bucket=32)
    assert len(lines(tmp_path / "samples.jsonl")) == 4 and s3["table"] == s["table"]


def test_ppl_bad_first_bucket_fails_before_any_compute(model, tok, tmp_path):
    with pytest.raises(ValueError, match="first_bucket"):
        run_suite(model, tok, "ppl", lengths=[128], samples=1, output_dir=tmp_path, progress=False, first_bucket=0)
    assert not (tmp_path / "samples.jsonl").exists()


@pytest.mark.parametrize("suite, kwargs", [("passkey", {"lengths": [300]}), ("ppl", {"lengths": [64]})])
def test_every_suite_writes_its_summary_once(model, tok, tmp_path, monkeypatch, suite, kwargs):
    written = []
    real = runner.write_json
    monkeypatch.setattr(runner, "write_json", lambda path, obj, **kw: written.append(path) or real(path, obj, **kw))
    monkeypatch.setattr(suite_base, "greedy_answer", oracle()[0])
    run_suite(model, tok, suite, samples=1, output_dir=tmp_path, segment_len=32, progress=False, **kwargs)
    assert written == [tmp_path / "summary.json"]


def test_babilong_uses_the_label_set_rule(model, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(suite_base, "greedy_answer",
                        lambda *a, **k: Generation(" Kitchen. Then the garden", [0], "stop"))
    s = run_suite(model, tok, "babilong", lengths=[1200], samples=4, tasks=["qa1", "qa5"], output_dir=tmp_path,
                  progress=False)
    assert list(s["table"]) == ["qa1", "qa5"]
    for r in lines(tmp_path / "samples.jsonl"):
        assert r["score"] == float(r["answer"] == "kitchen"), r  # first sentence only; qa5 never a room
    assert s["table"]["qa5"][1200] == 0.0


def test_dependency_scores_yes_no_on_the_first_word(model, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(suite_base, "greedy_answer", lambda *a, **k: Generation(" no, yes", [0], "stop"))
    s = run_suite(model, tok, "dependency", lengths=[1500], samples=4, hops=[2], output_dir=tmp_path, progress=False)
    recs = lines(tmp_path / "samples.jsonl")
    assert {r["hops"] for r in recs} == {2} and list(s["table"]) == ["2-hop"]
    for r in recs:
        assert r["score"] == float(r["answer"] == "no"), r

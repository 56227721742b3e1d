"""The CPU proof pipeline end to end at toy size: train (curriculum) -> evaluate -> summary of the issue's shape."""

import json
import re

import pytest

from experiments import cpu_proof


@pytest.mark.slow
def test_cpu_proof_pipeline_writes_summary_of_the_required_shape(tmp_path):
    out, train_dir = tmp_path / "results", tmp_path / "train"
    summary = cpu_proof.main(["--variants", "swa", "--lengths", "300", "--samples", "1", "--steps-scale", "0.004",
                              "--out", str(out), "--train-dir", str(train_dir), "--no-heatmap",
                              "trainer.log_every_n_steps=1"])
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert set(on_disk) == {"swa"} and set(on_disk["swa"]) == {"passkey", "hashhop"}
    for row in on_disk["swa"].values():
        assert set(row) == {"300"} and 0.0 <= row["300"] <= 100.0
    assert (out / "results.md").read_text().startswith("| variant | task |")
    assert (train_dir / "swa" / "4_4k" / "checkpoints" / "last.ckpt").exists()  # all stages ran, chained
    assert (out / "swa" / "curve.csv").read_text().count("\n") > 4  # a header + a loss per step of 4 stages
    assert (out / "curves.png").stat().st_size > 0


def test_bad_variant_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--variants"):
        cpu_proof.main(["--variants", "gpt", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--tasks"):
        cpu_proof.main(["--variants", "swa", "--tasks", "niah", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"--tasks \['niah'\]"):  # the group name expands, the rest is checked
        cpu_proof.main(["--variants", "swa", "--tasks", "variations", "niah", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--hashhop-pairs"):
        cpu_proof.main(["--variants", "swa", "--hashhop-pairs", "-1", "--out", str(tmp_path)])


def test_issue14_cells_are_rows_of_the_suites():
    """Each summary task is a row of a benchmark suite (no copy of a suite): its cells generate the variation named."""
    import data_gen
    from benchmarks.suites import get_suite

    assert {"passkey", "hashhop", "hashhop_pairs8", "passkey_essay", "hashhop_essay"} <= set(cpu_proof.TASKS)
    for name, (suite, params) in cpu_proof.TASKS.items():
        spec = get_suite(suite)
        cells = spec.make_cells(spec.options({"rows": {name: params}, "lengths": [1024, 65536]}))
        assert [(c.row, c.length) for c in cells] == [(name, 1024), (name, 65536)]
        sample = data_gen.generate(cells[0].task, 1, 1024, split="eval", **cells[0].param_dict)[0]
        meta = sample["meta"]
        assert meta["haystack"] == ("essay" if name.endswith("_essay") else "noise")
        assert sum(nd["kind"] == "distractor" for nd in meta["needles"]) == (8 if name == "hashhop_pairs8" else 0)
        assert not sample["input"].startswith(("There is an important", "Memorize"))  # no intro, as trained


def test_variations_are_rows_of_the_suites_that_generate_what_they_name():
    """The untrained variations (`--tasks`, `make proof`'s MAG line) are suite rows too, and each generates what its
    name says: the haystack, the number of distractor pairs, the token / key length, the intro."""
    import data_gen
    from benchmarks.suites import get_suite

    assert not set(cpu_proof.VARIATIONS) & set(cpu_proof.TASKS)
    for name, (suite, params) in cpu_proof.VARIATIONS.items():
        spec = get_suite(suite)
        cells = spec.make_cells(spec.options({"rows": {name: params}, "lengths": [1024]}))
        sample = data_gen.generate(cells[0].task, 1, 1024, split="eval", **cells[0].param_dict)[0]
        meta, text = sample["meta"], sample["input"]
        distractors = [nd for nd in meta["needles"] if nd["kind"] == "distractor"]
        pairs = int(re.search(r"pairs(\d+)", name).group(1)) if "pairs" in name else 0
        assert len(distractors) == pairs, name
        if "_code" in name:
            assert meta["haystack"] == "code", name
        if "_len" in name:
            assert len(sample["answer"]) == int(name.split("_len")[1].split("_")[0]), name
        if "_near" in name:
            assert meta["near_users"] == int(name.split("_near")[1]), name
        if "9digits" in name:
            assert len(sample["answer"]) == 9, name
        assert text.startswith(("There is an important", "Memorize")) == name.endswith("_intro"), name


def test_summary_merges_tasks_and_lengths_of_earlier_runs():
    assert cpu_proof.markdown({"mag": {"passkey": {"1024": 100.0, "65536": 90.0}, "hashhop_pairs8": {"1024": 50.0}}},
                              [1024, 65536]).splitlines()[2:] == ["| mag | passkey | 100% | 90% |",
                                                                  "| mag | hashhop_pairs8 | 50% | – |"]


def _merge_many(path, variant, n):
    for i in range(n):
        cpu_proof.merge_summary(path, variant, {"passkey": {str(1024 + i): float(i)}})


def test_summary_writers_at_once_keep_each_others_cells(tmp_path):
    """Two runs sharing one results folder (one per core): every cell either wrote survives, the earlier run's
    lengths of the same task stay, and the folder holds nothing but the summary (no lock file left)."""
    import multiprocessing

    path = tmp_path / "summary.json"
    cpu_proof.merge_summary(path, "mag", {"passkey": {"65536": 90.0}})
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_merge_many, args=(path, v, 40)) for v in ("mag", "mac")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    on_disk = json.loads(path.read_text())
    assert on_disk["mag"]["passkey"] == {"65536": 90.0, **{str(1024 + i): float(i) for i in range(40)}}
    assert on_disk["mac"]["passkey"] == {str(1024 + i): float(i) for i in range(40)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_every_experiment_composes(tmp_path):
    for variant in cpu_proof.VARIANTS:
        cfg = cpu_proof.compose(variant, tmp_path, [])
        assert [s.name for s in cfg.curriculum.stages] == ["short", "1k", "2k", "4k"]
        assert cfg.memory.window == 64 or cfg.memory.variant == "mac"
        if variant != "swa":  # the proof's memory: induction init with a 16-byte conv context
            assert cfg.memory.memory.qk_init == "induction" and cfg.memory.memory.conv_kernel == 16
        cpu_proof.scale_steps(cfg, 0.01)
        assert all(s.trainer.max_steps >= 2 for s in cfg.curriculum.stages)


def test_the_peer_is_mag_with_another_memory(tmp_path):
    """`titans_pytorch` trains exactly what `mag` trains (curriculum, model, memory config), plus the adapter; the
    one difference is the head split titans-pytorch needs (no single head wider than the model: 2 x 128 where MAG
    has 1 x 256, the same q/k/v width), and the composed model builds with the peer's memory."""
    pytest.importorskip("titans_pytorch")
    from omegaconf import OmegaConf

    from titans.training.builders import build_model

    mag = OmegaConf.to_container(cpu_proof.compose("mag", tmp_path, []), resolve=True)
    cfg = cpu_proof.compose("titans_pytorch", tmp_path, [])
    peer = OmegaConf.to_container(cfg, resolve=True)
    assert peer["memory"].pop("memory_impl") == "benchmarks.peers.titans_pytorch.use_titans_pytorch_memory"
    assert peer.pop("task_name") == "cpu_proof_titans_pytorch" and mag.pop("task_name") == "cpu_proof_mag"
    (pm, mm) = (peer["memory"]["memory"], mag["memory"]["memory"])
    assert (pm.pop("heads"), pm.pop("head_dim"), mm.pop("heads"), mm.pop("head_dim")) == (2, 128, 1, 256)
    assert peer == mag
    model, _ = build_model(cfg.model, cfg.memory, freeze="none")  # the adapter accepts it (1 x 256 raised)
    assert type(model.model.layers[0].memory).__name__ == "PeerMemory"


def _fake_stage(root, stage, rows):
    d = root / stage / "csv"
    d.mkdir(parents=True)
    lines = ["step,train/loss,val/answer_acc"] + [f"{s},{loss},{acc}" for s, loss, acc in rows]
    (d / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_curves_concatenate_stages_and_keep_variants_trained_elsewhere(tmp_path):
    """curve.csv offsets each stage by the last one's steps; curves.png draws every variant whose curve.csv
    is in the results, including one trained on another machine (no logs under this --train-dir)."""
    import csv

    train, out = tmp_path / "train", tmp_path / "results"
    _fake_stage(train / "mag", "1_short", [(9, 2.5, ""), (19, 1.5, ""), (19, "", 0.5)])
    _fake_stage(train / "mag", "2_1k", [(4, 0.5, ""), (9, 0.25, 1.0)])
    assert cpu_proof.export_curve(train / "mag", out / "mag" / "curve.csv") == 5
    with open(out / "mag" / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], int(r["step"])) for r in rows] == [
        ("1_short", 9), ("1_short", 19), ("1_short", 19), ("2_1k", 24), ("2_1k", 29)]
    assert rows[2]["val_answer_acc"] == "0.5" and rows[2]["train_loss"] == ""
    assert cpu_proof.export_curve(train / "mac", out / "mac" / "curve.csv") == 0  # nothing trained: no file
    assert not (out / "mac").exists()
    (out / "swa").mkdir()
    (out / "swa" / "curve.csv").write_text("stage,stage_step,step,train_loss,val_answer_acc\n1_short,9,9,2.2,\n")
    assert cpu_proof.curves(out) == ["mag", "swa"]
    assert (out / "curves.png").stat().st_size > 0
    cpu_proof.main(["--variants", "mag", "mac", "--curves-only", "--train-dir", str(train), "--out", str(out)])
    assert (out / "mag" / "curve.csv").exists() and not (out / "mac").exists()


def test_checkpoint_option_is_checked(tmp_path):
    with pytest.raises(ValueError, match="exactly one variant"):
        cpu_proof.main(["--variants", "mag", "swa", "--checkpoint", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--checkpoint=.*no such file"):
        cpu_proof.main(["--variants", "mag", "--checkpoint", str(tmp_path / "x.ckpt"), "--out", str(tmp_path)])


@pytest.mark.parametrize("allow", [False, True])
def test_a_checkpoint_is_evaluated_under_a_changed_switch_only_when_asked(tmp_path, monkeypatch, allow):
    """`allow_arch_mismatch=true` reaches the loader (a test-time change of a switch, on purpose); by default the
    loader refuses a checkpoint whose recorded config differs."""
    import benchmarks.evaluate

    seen = {}

    class Built(Exception):
        pass

    def fake_main_model(run):
        seen.update(run)
        raise Built

    monkeypatch.setattr(benchmarks.evaluate, "main_model", fake_main_model)
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(Built):
        cpu_proof.main(["--checkpoint", str(ckpt), "memory.memory.max_lr=0.25", f"allow_arch_mismatch={allow}",
                        "--variants", "mag", "--out", str(tmp_path / "out"), "--train-dir", str(tmp_path / "tr")])
    assert seen["allow_arch_mismatch"] is allow and seen["memory"]["memory"]["max_lr"] == 0.25

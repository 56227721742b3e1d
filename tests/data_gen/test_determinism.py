"""Every data_gen task gives the same bytes in another process (another PYTHONHASHSEED): no unseeded RNG, no
iteration over a set or over dict keys built from one, no dependence on object ids."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Generates samples of every registered task (plus the haystack / range variations) and prints {name: sha256}.
SCRIPT = r"""
import hashlib, json, sys
import data_gen

extra = {
    "passkey/mixed": ("passkey", {"haystack": "mixed", "digits": [3, 9]}),
    "passkey/code": ("passkey", {"haystack": "code"}),
    "hashhop/mixed": ("hashhop", {"haystack": {"noise": 1, "essay": 1, "code": 1}, "n_pairs": [0, 8],
                                  "hash_len": [4, 8]}),
    "hashhop/essay": ("hashhop", {"haystack": "essay", "n_pairs": 4}),
}
small = {"cwe": {"freq_cw": 8, "num_cw": 5}, "code_retrieval": {"max_files": 30}}  # defaults need > 4K tokens / seconds
jobs = {name: (name, small.get(name, {})) for name in sorted(data_gen.TASKS)}
jobs.update(extra)
out = {}
for name, (task, params) in jobs.items():
    samples = data_gen.generate(task, 2, 1536, seed=7, **params)
    out[name] = hashlib.sha256(json.dumps(samples, sort_keys=True).encode()).hexdigest()
mix = data_gen.Mixture.from_config({"components": [{"task": "passkey", "params": {"haystack": "mixed"}},
                                                    {"task": "hashhop", "params": {"n_pairs": [0, 4]}}],
                                    "lengths": [512, 1024]})
out["mixture"] = hashlib.sha256(json.dumps([mix.sample(i) for i in range(6)], sort_keys=True).encode()).hexdigest()
json.dump(out, sys.stdout)
"""


def _run(hash_seed: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_every_task_same_bytes_under_another_hash_seed():
    import data_gen

    procs = [_run("1"), _run("12345")]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    a, b = results
    assert set(a) >= set(data_gen.TASKS), "a task is missing from the determinism check"
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"tasks whose samples depend on the process (unseeded RNG or set order): {differ}"

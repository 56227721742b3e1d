"""Diagnose a memory model on long prompts: what it writes at the needle, what survives, what it reads back.

    python -m benchmarks.diagnose experiment=cpu_proof_mag checkpoint=RUN/4_4k/checkpoints/last.ckpt \
        lengths=[1024,4096,16384] prompts=[passkey,hashhop_pairs8] paths.output_dir=outputs/diagnose

conf/diagnose.yaml holds the options; `diagnose(cfg)` is the callable edge (tests call it). The model loads
through `benchmarks.evaluate.main_model` (checkpoint, model_dir or a fresh model from the config). Each prompt is
a data_gen sample (the eval split, the same draw as evaluate.py's) streamed through the real inference path
(`titans.streaming`, `segment_len` tokens per call) with `output_memory_aux=True`: every memory layer reports its
θ, α, keys and values per token on the cache (`MemoryAux`), which are reduced segment by segment (running sums and
the few positions that matter are kept), and the memory state in the cache gives ‖M‖ after each segment. Then
  - the gold completion is fed teacher-forced on a copy of the cache, to compare the memory's read at the
    question's last token and at each answer position with what it wrote at the needle;
  - the model answers greedily from the original cache (`benchmarks.inference.greedy_answer`, as the runner does).

Per memory layer `i`, `records[*].layers["<i>"]` of <output_dir>/diagnose.json holds:
  log10_survival        log10 Π(1−α_t), t from the needle's last token (excluded) to the question's last token
                        (included): the share of what the needle wrote that the forget gate leaves when the
                        question reads. `log10_survival` is the most retentive head, `_heads` every head.
  lr_needle, lr_haystack, forget_needle, forget_haystack: mean θ (as used, after clipping and the chunk step
                        cap) and α over the needle's tokens and over the haystack's tokens.
  weight_norm           [[tokens seen, ‖M‖], ...] after each streamed segment (all of M's tensors, batch row 0).
  read_cos              cos(read at question_last + j, value written at answer_start + j), mean over heads and the
                        answer's tokens j. A memory that recalls stores "context -> next token" (the key of token t
                        summarises the tokens before it), so the question's query finds the key of the needle's first
                        answer token and reads its value. `read_cos_heads`: per head; `read_cos_tokens`: per j.
  read_cos_distractor   the same against each distractor pair's answer (the best one); read_cos_haystack: the mean
                        against `haystack_probes` random haystack spans; read_rank: 1 + how many distractor and
                        haystack spans the read matches better than the needle's (1 = the needle wins).
  key_cos_distractor    cos(key written at the queried pair's first answer token, the same key of each distractor
                        pair): max and mean (`_mean`) over pairs: how distinguishable the addresses are;
                        key_cos_haystack: mean against the haystack probes; key_cos_haystack_centred: the same
                        after removing the probes' mean key (high raw, ~0 centred: the keys share one direction,
                        so every write also moves the needle's read).
  key_collisions        how many haystack tokens after the needle write to (nearly) its address: key cosine with the
                        needle's first answer token >= KEY_COLLISION (0.9, mean over heads); key_cos_after_max: the
                        closest one. Each such write pulls M(k_needle) toward another value.
  query_key_cos         cos(query at the question's last token, key at the needle's first answer token);
                        query_key_cos_distractor the best distractor's.
Each record also has the greedy answer, `correct`, `answered_distractor` (the answer is another pair's token) and
`chars_like_answer` / `chars_like_distractor` (share of the gold / best distractor token's characters the answer has
in place: a blend of two pairs scores on both), and for lookups among pairs `wrong_chars` (answer characters the
prediction has wrong, after the first) with `wrong_chars_bigram` (how many of them continue the prediction's previous
character as some distractor token does: "7e" from a distractor "f7e6ac" — the memory addressed by the last character
instead of the queried user) and `wrong_chars_bigram_chance` (the share expected if wrong characters were drawn
uniformly from the tokens' alphabet). `summary` adds their totals' ratio `bigram_copied` and its chance level.
`summary[prompt][length]` averages the numbers over samples (`layer<i>/<name>`) next to the accuracy (%) and the
share of answers that were a distractor's (`distractor_answers`, %);
diagnose.png plots survival, read cosines, accuracy by length and ‖M‖ over the longest stream.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from titans.compat import cache_kwargs, output_cache
from titans.io import write_bytes, write_json
from titans.streaming import stream_segments

log = logging.getLogger(__name__)

KEY_COLLISION = 0.9  # cosine from which a later key counts as writing to the needle's address

SCALARS = ("log10_survival", "lr_needle", "lr_haystack", "forget_needle", "forget_haystack", "read_cos",
           "read_cos_distractor", "read_cos_haystack", "read_rank", "key_cos_distractor", "key_cos_distractor_mean",
           "key_cos_haystack", "key_cos_haystack_centred", "key_collisions", "key_cos_after_max", "query_key_cos",
           "query_key_cos_distractor", "weight_norm_end")


@dataclass
class Spans:
    """Token positions of one prompt. Spans are [start, end)."""

    needle: tuple[int, int]  # the piece holding the answer (pass key: the needle; hash hop: the queried link)
    answer: tuple[int, int]  # the gold completion's tokens inside that piece
    distractors: list[tuple[int, int]]  # the same place inside each distractor piece
    distractor_answers: list[str]  # the text there (a distractor pair's token)
    haystack: Tensor  # bool [T]: tokens of no piece and not of the question
    question: int  # first token of the question
    length: int  # T


def _token_span(counter, text: str, start: int, end: int) -> tuple[int, int]:
    a, b = counter.token_positions(text, [start, end - 1])
    return a, b + 1


def locate(sample: Mapping, counter) -> Spans:
    """Where the needle, its answer, the distractors' answers, the haystack and the question are, in tokens.

    The needle is the piece whose text holds the gold completion (" 12345", " 3f9a1c"); a distractor's answer is
    the span at the same distance from its piece's end (data_gen writes distractors with the needle's template).
    The question starts after the input's last newline (data_gen puts "\\n" + question at the end).
    """
    text, meta = sample["input"], sample["meta"]
    completion = meta["completion"]
    pieces = meta.get("needles") or []
    holder = next((p for p in pieces if p["kind"] != "distractor" and completion in p["text"]), None)
    if holder is None:
        raise ValueError(f"task {sample['task']!r}: the answer {completion!r} is not written in any needle of the "
                         f"prompt; diagnose supports tasks whose answer stands in the haystack (passkey, hashhop)")
    at = holder["char_pos"] + holder["text"].index(completion)
    from_end = holder["char_pos"] + len(holder["text"]) - at
    T = counter.count(text)
    question = text.rfind("\n") + 1
    last_piece = max(p["char_pos"] + len(p["text"]) for p in pieces)
    q_tok = counter.token_positions(text, [max(question, last_piece)])[0] if question < len(text) else T - 1
    haystack = torch.zeros(T, dtype=torch.bool)
    haystack[:q_tok] = True
    spans = {}
    for p in pieces:
        s, e = _token_span(counter, text, p["char_pos"], p["char_pos"] + len(p["text"]))
        haystack[s:e] = False
        spans[id(p)] = (s, e)
    distractors, answers = [], []
    for p in pieces:
        if p["kind"] == "distractor":
            start = p["char_pos"] + len(p["text"]) - from_end
            distractors.append(_token_span(counter, text, start, start + len(completion)))
            answers.append(text[start:start + len(completion)].strip())
    return Spans(spans[id(holder)], _token_span(counter, text, at, at + len(completion)), distractors, answers,
                 haystack, q_tok, T)


def _concat_aux(records) -> dict[str, Tensor]:
    """One forward's aux of a layer over all its tokens (MAC calls its memory once per segment piece)."""
    names = ("keys", "values", "queries", "retrieved", "lr", "forget")
    # (H, n[, d]) on the CPU: the reductions are small next to the forward, and they then run on any device
    return {k: torch.cat([r.memory[k].detach() for r in records], dim=2)[0].float().cpu() for k in names}


def _weight_norm(state) -> float:
    return math.sqrt(sum(float(w[0].double().pow(2).sum()) for w in state.weights.values()))


class _LayerStats:
    """Running reductions of one memory layer over the stream, and the keys/values at the positions that matter."""

    def __init__(self, positions: Tensor, spans: Spans) -> None:
        self.positions = positions  # sorted unique token positions whose keys and values are kept
        self.spans = spans
        self.log_keep: Tensor | None = None  # (H,) float64: Σ log(1 − α_t) over the survival range
        self.sums = {k: 0.0 for k in ("lr_needle", "lr_haystack", "forget_needle", "forget_haystack")}
        self.counts = {"needle": 0, "haystack": 0}
        self.keys: Tensor | None = None  # (H, P, d)
        self.values: Tensor | None = None
        self.norms: list[list[float]] = []
        self.collisions = 0  # haystack tokens after the needle whose key is within KEY_COLLISION of the needle's
        self.key_cos_after_max: float | None = None

    def add(self, aux: dict[str, Tensor], start: int, survive_from: int, survive_to: int) -> None:
        """Fold in the aux of tokens [start, start + n); survival counts tokens in [survive_from, survive_to]."""
        H, n = aux["forget"].shape
        if self.log_keep is None:
            d = aux["keys"].shape[-1]
            self.log_keep = torch.zeros(H, dtype=torch.float64)
            self.keys = torch.zeros(H, len(self.positions), d)
            self.values = torch.zeros(H, len(self.positions), d)
        lo, hi = max(survive_from, start), min(survive_to + 1, start + n)
        if hi > lo:  # log(1 − α) floored as the scan floors log_keep (a gate at 1 erases, it does not make -inf)
            self.log_keep += torch.log1p(-aux["forget"][:, lo - start:hi - start].double()).clamp_min(-60.0).sum(1)
        ns, ne = self.spans.needle
        hay = self.spans.haystack[start:start + n]
        for name, sel in (("needle", slice(max(ns - start, 0), max(min(ne - start, n), 0))), ("haystack", hay)):
            lr, fg = aux["lr"][:, sel], aux["forget"][:, sel]
            self.sums[f"lr_{name}"] += float(lr.double().sum())
            self.sums[f"forget_{name}"] += float(fg.double().sum())
            self.counts[name] += fg.numel()
        inside = (self.positions >= start) & (self.positions < start + n)
        if inside.any():
            rel = self.positions[inside] - start
            self.keys[:, inside] = aux["keys"][:, rel]
            self.values[:, inside] = aux["values"][:, rel]
        a0 = self.spans.answer[0]
        after = hay & (torch.arange(start, start + n) >= ne)  # haystack written after the needle
        if a0 < start + n and after.any():  # the needle's key is known: how many later writes share its address?
            needle_key = self.keys[:, int(torch.searchsorted(self.positions, a0))]  # (H, d)
            cos = F.cosine_similarity(aux["keys"][:, after], needle_key[:, None], dim=-1).mean(0)  # (tokens,)
            self.collisions += int((cos >= KEY_COLLISION).sum())
            self.key_cos_after_max = max(self.key_cos_after_max or -1.0, float(cos.max()))


def _cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine over the last dim, averaged over every other dim but the leading head dim: (H, ...) -> (H,)."""
    c = F.cosine_similarity(a, b, dim=-1)
    return c.flatten(1).mean(1) if c.dim() > 1 else c


def _layer_report(st: _LayerStats, index: dict[int, int], spans: Spans, probes: list[int], n: int,
                  read: dict[str, Tensor]) -> dict[str, Any]:
    def vals(start: int) -> Tensor:
        return st.values[:, [index[start + j] for j in range(n)]]  # (H, n, d)

    def key(start: int) -> Tensor:
        return st.keys[:, index[start]]  # (H, d)

    a0 = spans.answer[0]
    retrieved, query = read["retrieved"][:, :n], read["queries"][:, 0]  # (H, n, d), (H, d)
    heads = _cos(retrieved, vals(a0))
    others = [float(_cos(retrieved, vals(d0)).mean()) for d0, _ in spans.distractors]
    hay = [float(_cos(retrieved, vals(h)).mean()) for h in probes]
    out = {
        "log10_survival": float(st.log_keep.max()) / math.log(10),
        "log10_survival_heads": [round(float(v) / math.log(10), 6) for v in st.log_keep],
        "read_cos": float(heads.mean()),
        "read_cos_heads": [round(float(v), 4) for v in heads],
        "read_cos_tokens": [round(float(v), 4) for v in F.cosine_similarity(retrieved, vals(a0), dim=-1).mean(0)],
        "read_cos_distractor": max(others) if others else None,
        "read_cos_haystack": sum(hay) / len(hay) if hay else None,
        "read_rank": 1 + sum(c > float(heads.mean()) for c in others + hay),
        "read_candidates": 1 + len(others) + len(hay),
        "query_key_cos": float(_cos(query, key(a0)).mean()),
        "query_key_cos_distractor": max((float(_cos(query, key(d0)).mean()) for d0, _ in spans.distractors),
                                        default=None),
        "weight_norm": st.norms,
        "weight_norm_end": st.norms[-1][1] if st.norms else None,
    }
    kd = [float(_cos(key(a0), key(d0)).mean()) for d0, _ in spans.distractors]
    kh = [float(_cos(key(a0), key(h)).mean()) for h in probes]
    if probes:  # the same with the haystack's mean key removed: how much of the likeness is one shared direction
        mean_key = torch.stack([key(h) for h in probes]).mean(0)  # (H, d)
        khc = [float(_cos(key(a0) - mean_key, key(h) - mean_key).mean()) for h in probes]
        out["key_cos_haystack_centred"] = sum(khc) / len(khc)
    out.update(key_collisions=st.collisions, key_cos_after_max=st.key_cos_after_max,
               key_cos_distractor=max(kd) if kd else None, key_cos_distractor_mean=sum(kd) / len(kd) if kd else None,
               key_cos_haystack=sum(kh) / len(kh) if kh else None)
    for name in ("needle", "haystack"):
        c = max(st.counts[name], 1)
        out[f"lr_{name}"] = st.sums[f"lr_{name}"] / c if st.counts[name] else None
        out[f"forget_{name}"] = st.sums[f"forget_{name}"] / c if st.counts[name] else None
    return out


def _agreement(prediction: str, target) -> float | None:
    """Share of `target`'s characters that the (stripped) prediction has at the same place: 1 = exact, and a blend
    of two pairs' tokens scores partly on both."""
    if not isinstance(target, str) or not target:
        return None
    pred = prediction.strip()
    return sum(a == b for a, b in zip(pred, target)) / len(target)


def bigram_copies(prediction: str, answer: str, distractors: Sequence[str], alphabet: str = "0123456789abcdef",
                  ) -> tuple[int, int, float]:
    """(wrong, copied, chance) over the answer's characters after the first that the (stripped) prediction has
    wrong: `copied` continue the prediction's previous character as some distractor token does (the bigram
    occurs in a distractor), `chance` the expected number of such copies if each wrong character were drawn
    uniformly from the other characters of `alphabet`."""
    pred = prediction.strip()
    wrong = copied = 0
    chance = 0.0
    for i in range(1, min(len(pred), len(answer))):
        if pred[i] == answer[i]:
            continue
        wrong += 1
        followers = {d[j + 1] for d in distractors for j in range(len(d) - 1) if d[j] == pred[i - 1]}
        copied += pred[i] in followers
        chance += len(followers - {answer[i]}) / max(1, len(set(alphabet) - {answer[i]}))
    return wrong, copied, chance


def memory_layers(model) -> list[int]:
    """Indices of the decoder layers that carry a memory."""
    from titans.patch import titans_layers

    return [i for i, layer in titans_layers(model).items() if getattr(layer, "memory", None) is not None]


@torch.no_grad()
def diagnose_sample(model, tokenizer, sample: Mapping, *, segment_len: int, haystack_probes: int = 256,
                    seed: int = 0, stop: Sequence[str] = ("\n",)) -> dict[str, Any]:
    """Stream one data_gen sample through `model` (a patched model with memory), read its memory on the way and
    answer greedily. Returns the record described in the module docstring (without prompt/length labels)."""
    from benchmarks.inference import greedy_answer
    from benchmarks.suites.base import substring_score
    from data_gen.common import Counter

    layers = memory_layers(model)
    if not layers:
        raise ValueError("the model has no memory layer to diagnose (memory=none or swa); use a memory variant "
                         "(memory=mag|mal|mac, or the training run's experiment=...)")
    t0 = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    spans = locate(sample, Counter(tokenizer))
    ids = torch.tensor([tokenizer(sample["input"], add_special_tokens=False)["input_ids"]], device=device)
    comp = tokenizer(sample["meta"]["completion"], add_special_tokens=False)["input_ids"]
    T = ids.shape[1]
    if T != spans.length or T < 2:
        raise ValueError(f"the prompt has {T} tokens but its positions were counted on {spans.length}; diagnose needs "
                         f"the tokenizer the sample was sized with")
    n = max(1, min(len(comp), spans.answer[1] - spans.answer[0]))  # answer tokens compared
    # haystack probes: random spans of n haystack tokens (the read's chance level and rank)
    ok = spans.haystack.clone()
    for j in range(1, n):
        ok[:-j] &= spans.haystack[j:]
    ok[T - n + 1:] = False
    starts = ok.nonzero().flatten()
    g = torch.Generator().manual_seed(seed)
    probes = starts[torch.randperm(len(starts), generator=g)[:haystack_probes]].sort().values.tolist()
    wanted = {a + j for a in [spans.answer[0], *(d for d, _ in spans.distractors), *probes] for j in range(n)}
    positions = torch.tensor(sorted(wanted), dtype=torch.long)
    index = {int(p): i for i, p in enumerate(positions)}
    stats = {i: _LayerStats(positions, spans) for i in layers}
    survive_from, last = spans.needle[1], T - 1

    cache = None
    for start, out in stream_segments(model, ids[:, :-1], segment_len, output_memory_aux=True):
        cache = output_cache(out)
        for i in layers:
            stats[i].add(_concat_aux(cache.memory_aux[i]), start, survive_from, last)
            stats[i].norms.append([min(start + segment_len, T - 1), _weight_norm(cache.memory_states[i])])
        cache.memory_aux = {}
    # the read: the question's last token and the gold completion, teacher-forced on a copy of the cache
    tf = torch.tensor([[int(ids[0, -1]), *comp[:-1]]], device=device)
    out = model(tf, **cache_kwargs(copy.deepcopy(cache)), use_cache=True, output_memory_aux=True)
    reports = {}
    for i in layers:
        aux = _concat_aux(output_cache(out).memory_aux[i])
        stats[i].add({**aux, "keys": aux["keys"][:, :1], "values": aux["values"][:, :1], "lr": aux["lr"][:, :1],
                      "forget": aux["forget"][:, :1]}, last, survive_from, last)
        reports[str(i)] = _layer_report(stats[i], index, spans, probes, n, aux)
    budget = max(1, int(sample["meta"].get("answer_budget") or 32))
    gen = greedy_answer(model, tokenizer, ids[:, -1:], cache=cache, segment_len=segment_len, max_new_tokens=budget,
                        stop=stop)
    score = float(substring_score(gen.text, sample))
    needle_depth = spans.needle[0] / T
    return {"tokens": T, "needle_depth": round(needle_depth, 4), "answer": sample["answer"], "prediction": gen.text,
            "correct": score == 1.0, "score": score, "n_distractors": len(spans.distractors),
            "answered_distractor": any(a and a in gen.text for a in spans.distractor_answers),
            "chars_like_answer": _agreement(gen.text, sample["answer"]),
            "chars_like_distractor": max((_agreement(gen.text, a) for a in spans.distractor_answers), default=None),
            **dict(zip(("wrong_chars", "wrong_chars_bigram", "wrong_chars_bigram_chance"),
                       bigram_copies(gen.text, sample["answer"], spans.distractor_answers)
                       if spans.distractor_answers else (None, None, None))),
            "spans": {"needle": list(spans.needle), "answer": list(spans.answer),
                      "distractor_answers": [list(d) for d in spans.distractors], "question": spans.question},
            "layers": reports, "seconds": round(time.perf_counter() - t0, 3)}


# ------------------------------------------------------------------------------------------ the config edge


def _check_int_list(key: str, value: Any) -> list[int]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{key}={value!r} is not allowed; give a non-empty list of positive ints, e.g. [1024,4096]")
    return sorted({int(v) for v in value})


def _check_int(key: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{key}={value!r} is not allowed; it must be an int >= {low}")
    return value


def check_options(cfg: Mapping) -> dict[str, Any]:
    """The diagnosis options of `cfg` (conf/diagnose.yaml), validated before any model is built."""
    from data_gen.registry import resolve_params

    specs = cfg.get("prompt_specs") or {}
    names = cfg.get("prompts")
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"prompts={names!r} is not allowed; give a non-empty list from {sorted(specs)}")
    unknown = [p for p in names if p not in specs]
    if unknown:
        raise ValueError(f"prompts has unknown name(s) {unknown}; allowed: {sorted(specs)} (or add one under "
                         f"prompt_specs: +prompt_specs.NAME={{task:passkey,params:{{...}}}})")
    prompts = {}
    for p in names:
        spec = specs[p]
        if not isinstance(spec, Mapping) or "task" not in spec:
            raise ValueError(f"prompt_specs.{p}={spec!r} is not allowed; give {{task: <data_gen task>, "
                             f"params: {{...}}}}")
        resolve_params(spec["task"], dict(spec.get("params") or {}))  # unknown task/parameter: a ValueError naming it
        prompts[p] = {"task": spec["task"], "params": dict(spec.get("params") or {})}
    return {"prompts": prompts, "lengths": _check_int_list("lengths", cfg.get("lengths")),
            "samples": _check_int("samples", cfg.get("samples"), 1),
            "segment_len": _check_int("segment_len", cfg.get("segment_len"), 1),
            "haystack_probes": _check_int("haystack_probes", cfg.get("haystack_probes", 256), 0),
            "seed": _check_int("seed", cfg.get("seed") or 0, 0)}


def summarize(records: Sequence[Mapping]) -> dict[str, dict[str, dict[str, Any]]]:
    """{prompt: {length: {"accuracy": %, "samples": n, "layer<i>/<name>": mean over samples}}}."""
    groups: dict[tuple[str, int], list[Mapping]] = {}
    for r in records:
        groups.setdefault((r["prompt"], r["length"]), []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (prompt, length), rs in groups.items():
        n = len(rs)
        row: dict[str, Any] = {"accuracy": round(100.0 * sum(r["correct"] for r in rs) / n, 2),
                               "distractor_answers": round(100.0 * sum(r["answered_distractor"] for r in rs) / n, 2),
                               "samples": n}
        for key in ("chars_like_answer", "chars_like_distractor"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            row[key] = round(sum(vals) / len(vals), 4) if vals else None
        wrong = sum(r.get("wrong_chars") or 0 for r in rs)
        row["bigram_copied"] = round(sum(r.get("wrong_chars_bigram") or 0 for r in rs) / wrong, 4) if wrong else None
        row["bigram_copied_chance"] = (round(sum(r.get("wrong_chars_bigram_chance") or 0 for r in rs) / wrong, 4)
                                       if wrong else None)
        for layer in rs[0]["layers"]:
            for name in SCALARS:
                vals = [r["layers"][layer][name] for r in rs if r["layers"][layer].get(name) is not None]
                row[f"layer{layer}/{name}"] = round(sum(vals) / len(vals), 5) if vals else None
        out.setdefault(prompt, {})[str(length)] = row
    return out


def plot(result: Mapping, path: Path) -> Path:
    """diagnose.png: survival, read cosines and accuracy by length, ‖M‖ over the longest stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, lengths, layers = result["summary"], result["lengths"], result["memory_layers"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_s, ax_r), (ax_a, ax_n) = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (prompt, rows) in enumerate(summary.items()):
        c = colors[k % len(colors)]
        xs = [n for n in lengths if str(n) in rows]
        ax_a.plot(xs, [rows[str(n)]["accuracy"] for n in xs], "o-", color=c, label=prompt)
        for li, layer in enumerate(layers):
            tag = f"{prompt}" + (f" L{layer}" if len(layers) > 1 else "")
            style = ["-", "--", ":", "-."][li % 4]
            def series(name: str) -> list[tuple[int, float]]:
                return [(n, v) for n in xs if (v := rows[str(n)].get(f"layer{layer}/{name}")) is not None]  # noqa: B023

            if pts := series("log10_survival"):
                ax_s.plot(*zip(*pts), "o" + style, color=c, label=tag)
            if pts := series("read_cos"):
                ax_r.plot(*zip(*pts), "o" + style, color=c, label=f"{tag}: needle")
            if pts := series("read_cos_distractor"):
                ax_r.plot(*zip(*pts), "x" + style, color=c, alpha=0.6, label=f"{tag}: best distractor")
            if pts := series("read_cos_haystack"):
                ax_r.plot(*zip(*pts), "." + style, color=c, alpha=0.35, label=f"{tag}: haystack mean")
            longest = [r for r in result["records"] if r["prompt"] == prompt and r["index"] == 0]
            if longest:
                norms = max(longest, key=lambda r: r["length"])["layers"][str(layer)]["weight_norm"]
                if norms:
                    ax_n.plot(*zip(*norms), style, color=c, label=tag)
    for ax, title, ylabel in ((ax_s, "what survives from the needle to the question", "log10 Π(1−α) (best head)"),
                              (ax_r, "memory read at the answer vs values written", "cosine"),
                              (ax_a, "greedy answer", "accuracy (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    ax_a.set_ylim(-5, 105)
    ax_n.set_xlabel("tokens streamed (longest prompt)")
    ax_n.set_ylabel("‖M‖")
    ax_n.set_title("memory weight norm over the stream")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"memory diagnosis — {result['model']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def diagnose(cfg) -> dict[str, Any]:
    """Run the diagnosis of conf/diagnose.yaml (`cfg`: a DictConfig or a plain dict with its keys); writes
    <paths.output_dir>/diagnose.json and diagnose.png and returns the JSON's content."""
    import data_gen
    from benchmarks.evaluate import main_model, resolve_device, seed_everything
    from data_gen.common import Counter
    from titans.training.builders import to_plain

    cfg = to_plain(cfg)
    opts = check_options(cfg)
    out_dir = Path(cfg["paths"]["output_dir"])
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg["cpu_threads"]))
    seed_everything(opts["seed"])  # a fresh model from the config: the same memory init as evaluate.py builds
    name, model, tok = main_model(cfg)
    model.to(resolve_device(cfg.get("device"))).eval()
    layers = memory_layers(model)
    if not layers:
        raise ValueError(f"memory={(cfg.get('memory') or {}).get('name')!r}: the model has no memory layer to "
                         f"diagnose; use a memory variant (memory=mag|mal|mac) or the training run's experiment=...")
    counter = Counter(tok)
    records = []
    for prompt, spec in opts["prompts"].items():
        for length in opts["lengths"]:
            for i in range(opts["samples"]):
                sample = next(data_gen.iter_samples(spec["task"], 1, length, opts["seed"], counter, split="eval",
                                                    start=i, **spec["params"]))
                rec = diagnose_sample(model, tok, sample, segment_len=opts["segment_len"],
                                      haystack_probes=opts["haystack_probes"], seed=opts["seed"] + i)
                records.append({"prompt": prompt, "task": spec["task"], "length": length, "index": i, **rec})
                best = {k: round(v["log10_survival"], 2) for k, v in rec["layers"].items()}
                read = {k: round(v["read_cos"], 3) for k, v in rec["layers"].items()}
                log.info("%s @%d #%d: %s (answer %s, got %r), log10 survival %s, read cos %s, %.1fs", prompt, length,
                         i, "ok" if rec["correct"] else "WRONG", rec["answer"], rec["prediction"], best, read,
                         rec["seconds"])
    result = {"model": name, "checkpoint": cfg.get("checkpoint"), "model_dir": cfg.get("model_dir"),
              "memory_layers": layers, "lengths": opts["lengths"], "samples": opts["samples"],
              "segment_len": opts["segment_len"], "seed": opts["seed"], "prompts": opts["prompts"],
              "summary": summarize(records), "records": records}
    write_json(out_dir / "diagnose.json", result)
    plot(result, out_dir / "diagnose.png")
    return result


def main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="../conf", config_name="diagnose")(diagnose)()


if __name__ == "__main__":
    main()

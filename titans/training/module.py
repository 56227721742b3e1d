"""`TitansLitModule`: chunked BPTT-through-TTT around a finished (patched or plain) Qwen3.

training_step, per batch `input_ids [B, T]`:
    cache = None
    for each segment (segment_len tokens, the last may be shorter):
        logits, cache = model(segment, cache=cache)      # memory state + KV carried
        loss += CE(logits, targets) / (loss targets in the sequence) (+ gate / alignment regularisers)
        every bptt_window segments: backward(loss), detach(cache)   # gradient stops here
    clip, skip the step if the loss or gradient norm is not finite, optimizer step, scheduler step
One optimizer step per batch: gradients of all bptt windows of the batch accumulate. Logits are only
computed at positions that are loss targets (`logits_to_keep`), which matters for a 151k vocabulary.
The regularisers and the diagnostics read what the memory reports from the forward's own output
(`model(..., output_memory_aux=True)` -> `cache.memory_aux`), asked only on the segments that need it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from titans.cache import detach_cache
from titans.compat import cache_kwargs, output_cache
from titans.memory import NeuralMemory, query_error_cosine
from titans.patch import memory_diagnostics
from titans.training.bptt import needed_positions, segment_bounds, segment_loss_sum, shift_targets
from titans.variants.common import MemoryGate

log = logging.getLogger(__name__)


@dataclass
class BPTTConfig:
    """How a sequence is trained (conf/train.yaml `bptt`).

    segment_len: tokens per forward call; bptt_window: segments the gradient flows back through before
    the cache is detached (1 = only within a segment); grad_clip: max gradient norm (None/0 = off);
    strict_segments: require seq_len % segment_len == 0; gate_reg: weight of the gate regulariser
    (mean squared distance of the memory gates g to `gate_target`, weighted by segment length; keeps
    gates away from stuck-at-0/1, the MemoryMAG red flag), 0 = off; align_reg: weight λ of the MemoryMAG
    alignment term (L_align = −cos(query, memory gradient)): minus the mean, over the tokens
    every memory layer wrote in the segment, of cos(q_t, M_{t'}(k_t) − v_t), the query against the
    value-space direction of the token's inner gradient ∇ℓ (Eq. 12), weighted by segment length; the error
    side is detached, so the term trains the query path (how to ask), not the write; 0 = off.
    Regularisers change the training loss only. max_consecutive_skips: stop with an error after this many
    non-finite steps in a row (skipped steps do not count toward max_steps, so a run that has diverged
    for good would otherwise never end); 0 = never stop.
    """

    segment_len: int = 128
    bptt_window: int = 1
    grad_clip: float | None = 1.0
    strict_segments: bool = False
    gate_reg: float = 0.0
    gate_target: float = 0.5
    align_reg: float = 0.0
    max_consecutive_skips: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.segment_len, int) or self.segment_len <= 0:
            raise ValueError(f"bptt.segment_len={self.segment_len!r} is not allowed; it must be an int > 0.")
        if not isinstance(self.bptt_window, int) or self.bptt_window <= 0:
            raise ValueError(f"bptt.bptt_window={self.bptt_window!r} is not allowed; it must be an int >= 1 "
                             f"(segments the gradient flows back through).")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"bptt.grad_clip={self.grad_clip!r} is not allowed; allowed: null/0 (off) or > 0.")
        if self.gate_reg < 0 or not 0.0 <= self.gate_target <= 1.0:
            raise ValueError(f"bptt.gate_reg={self.gate_reg!r} / bptt.gate_target={self.gate_target!r}: gate_reg "
                             f"must be >= 0 and gate_target in [0, 1].")
        if isinstance(self.max_consecutive_skips, bool) or not isinstance(self.max_consecutive_skips, int) \
                or self.max_consecutive_skips < 0:
            raise ValueError(f"bptt.max_consecutive_skips={self.max_consecutive_skips!r} is not allowed; allowed: an "
                             f"int >= 0 (0 = never stop on non-finite steps).")
        if isinstance(self.align_reg, bool) or not isinstance(self.align_reg, int | float) or self.align_reg < 0:
            raise ValueError(f"bptt.align_reg={self.align_reg!r} is not allowed; allowed: a number >= 0 (the weight "
                             f"of the MemoryMAG query/memory-gradient alignment term; 0 = off).")


def alignment_cosine(records: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor] | None:
    """Mean cos(q_t, M_{t'}(k_t) − v_t) over the written tokens of the memory calls' aux dicts, the error side
    detached (a scalar with the query's graph; 0 when no token was written: a segment shorter than a chunk),
    and whether any token was written (a 0/1 scalar; tensors, so no host sync). None without records."""
    if not records:
        return None
    total, count = 0.0, 0
    for aux in records:
        cos, written = query_error_cosine({"queries": aux["queries"], "errors": aux["errors"].detach()})
        total = total + cos.float().sum()
        count = count + written.sum()
    return total / count.clamp_min(1), (count > 0).float()


class TitansLitModule(pl.LightningModule):
    """Lightning wrapper; receives a finished model (see `titans.training.builders.build_model`).

    Args:
        model: a causal LM taking `input_ids [B, S]`, the cache (`cache`, or `past_key_values` before
            transformers 5.24: `titans.compat`), `use_cache`, `logits_to_keep` and returning `.logits [B, S', V]`
            and the cache.
        bptt: BPTTConfig.
        optimizer: params -> Optimizer (a Hydra `_partial_`); default AdamW(lr=3e-4).
        scheduler: optimizer -> LR scheduler stepped every optimizer step (a `_partial_`), or None.
    """

    def __init__(self, model: nn.Module, bptt: BPTTConfig | None = None,
                 optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
                 scheduler: Callable[[torch.optim.Optimizer], object] | None = None):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        self.bptt = bptt or BPTTConfig()
        self.optimizer_fn = optimizer
        self.scheduler_fn = scheduler
        self.automatic_optimization = False
        self.batches_seen = 0  # batches consumed, including skipped ones (the data stream resumes here)
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.last_losses: list[float] = []  # per-batch training loss of this process (tests, curriculum logs)
        self.has_memory = any(isinstance(m, NeuralMemory) for m in model.modules())
        if self.bptt.gate_reg > 0 and not any(isinstance(m, MemoryGate) and m.form != "none" for m in model.modules()):
            raise ValueError(f"bptt.gate_reg={self.bptt.gate_reg} but the model has no memory gates (memory=none, "
                             f"or gate='none'); set bptt.gate_reg=0 or use memory=mag|mal|mac.")
        if self.bptt.align_reg > 0 and not self.has_memory:
            raise ValueError(f"bptt.align_reg={self.bptt.align_reg} but the model has no neural memory (memory=none); "
                             f"set bptt.align_reg=0 or use memory=mag|mal|mac.")
        self._grad_norm: Tensor | None = None  # set in on_before_optimizer_step under fp16 loss scaling
        self.last_align: tuple[Tensor, Tensor] | None = None  # (Σ cos·(e−s)/T, Σ (e−s)/T) of the last batch
        # DiagnosticsCallback sets record_diagnostics on the batches whose end logs; the training step then asks the
        # last segment's forward for the memory's aux (it costs ~4% of a tiny model's step) and keeps the scalars
        self.record_diagnostics = False
        self.last_diagnostics: dict[str, Tensor] = {}  # titans.patch.memory_diagnostics of the last recorded batch

    # ------------------------------------------------------------------ forward over segments

    def run_segments(self, input_ids: Tensor, targets: Tensor, extra_mask: Tensor | None = None,
                     backward: bool = False, on_logits: Callable[[int, Tensor, Tensor], None] | None = None,
                     diagnostics: bool = False) -> tuple[Tensor, bool]:
        """Run all segments of `input_ids [B, T]`, carrying the cache.

        targets `[B, T]`: next-token targets (-100 = no loss). extra_mask `[B, T]`: more positions whose
        logits `on_logits(start, positions, logits [B, P, V])` wants (answer accuracy). With `backward`,
        backpropagate every `bptt_window` segments and detach the cache. With `diagnostics`, keep the memory
        diagnostics of the last segment in `last_diagnostics`. Returns (loss, finite): the mean token loss of
        the sequence (detached) and whether every window's loss was finite.
        """
        B, T = input_ids.shape
        regularise = (self.bptt.gate_reg > 0 or self.bptt.align_reg > 0) and torch.is_grad_enabled()
        n_targets = (targets != -100).sum().clamp_min(1)
        bounds = segment_bounds(T, self.bptt.segment_len, self.bptt.strict_segments)
        cache = None
        window_loss: Tensor | None = None
        total = torch.zeros((), device=input_ids.device)
        align_sum = align_weight = torch.zeros((), device=input_ids.device)  # Σ cos·(e−s)/T, Σ (e−s)/T
        finite = True
        for k, (s, e) in enumerate(bounds):
            seg_targets = targets[:, s:e]
            masks = [seg_targets != -100] + ([extra_mask[:, s:e]] if extra_mask is not None else [])
            positions = needed_positions(*masks)
            keep = positions if positions is not None else 1  # 1: cheapest (last position only)
            ask = self.has_memory and (regularise or (diagnostics and k == len(bounds) - 1))
            out = self.model(input_ids=input_ids[:, s:e], **cache_kwargs(cache), use_cache=True, logits_to_keep=keep,
                             **({"output_memory_aux": True} if ask else {}))
            cache = output_cache(out)
            records = [r for layer in cache.memory_aux.values() for r in layer] if ask else []
            if ask and diagnostics and k == len(bounds) - 1:
                self.last_diagnostics = memory_diagnostics(cache)
            if cache is None and k < len(bounds) - 1:
                raise ValueError("the model returned no cache, so the next segment would start from scratch: HF "
                                 "turns the cache off under gradient checkpointing unless every decoder layer is "
                                 "patched; set gradient_checkpointing=false, patch every layer (memory.layers=null), "
                                 "or use one segment (bptt.segment_len >= data.seq_len).")
            if positions is not None:
                loss_k = segment_loss_sum(out.logits, seg_targets[:, positions]) / n_targets
                if on_logits is not None:
                    on_logits(s, positions, out.logits.detach())
            elif self._uniform_backward():
                loss_k = out.logits.sum() * 0.0  # no targets: every rank still runs the same backward calls (DDP)
            else:
                loss_k = torch.zeros((), device=input_ids.device)  # no targets: nothing to backpropagate
            if self.bptt.gate_reg > 0 and regularise:
                gates = [r.gate for r in records if r.gate is not None]
                if gates:
                    reg = torch.stack([(g.float() - self.bptt.gate_target).pow(2).mean() for g in gates]).mean()
                    loss_k = loss_k + self.bptt.gate_reg * reg * (e - s) / T
            if self.bptt.align_reg > 0 and regularise:
                align = alignment_cosine([r.memory for r in records])
                if align is not None:  # MemoryMAG: L_align = −cos(query, memory gradient)
                    cos, written = align
                    loss_k = loss_k - self.bptt.align_reg * cos * (e - s) / T
                    align_sum = align_sum + cos.detach() * (e - s) / T
                    align_weight = align_weight + written * (e - s) / T
            window_loss = loss_k if window_loss is None else window_loss + loss_k
            if (k + 1) % self.bptt.bptt_window == 0 or k == len(bounds) - 1:
                if not torch.isfinite(window_loss):
                    finite = False
                    if not self._uniform_backward():
                        return total + window_loss.detach(), False
                    # DDP: keep making the same backward calls as the other ranks; the NaN reaches every
                    # rank's gradients through the all-reduce, so every rank skips the step together.
                if backward and window_loss.requires_grad:
                    self._backward(window_loss)
                total = total + window_loss.detach()
                window_loss = None
                cache = detach_cache(cache)
        if self.bptt.align_reg > 0 and torch.is_grad_enabled():
            self.last_align = (align_sum, align_weight)
        return total, finite

    def _backward(self, loss: Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)  # precision plugin (loss scaling) and strategy hooks
        else:
            loss.backward()  # used outside a Trainer (tests, notebooks)

    def _uniform_backward(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1

    # ------------------------------------------------------------------ Lightning hooks

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        opt.zero_grad(set_to_none=True)
        input_ids = batch["input_ids"]
        targets = shift_targets(batch["labels"])
        loss, finite = self.run_segments(input_ids, targets, backward=True, diagnostics=self.record_diagnostics)
        self.batches_seen += 1
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        grad_norm = torch.tensor(float("nan"))
        if finite and scaler is None:
            grad_norm = self._clip()
            finite = bool(torch.isfinite(grad_norm))
            if finite:
                opt.step()
        elif finite:
            # fp16 loss scaling: Lightning unscales inside opt.step(), then calls on_before_optimizer_step (we
            # clip there, on true gradients), then the scaler skips the update if a gradient overflowed and
            # lowers the scale. Unscaling here first would make Lightning's unscale_ fail.
            self._grad_norm = None
            opt.step()
            grad_norm = self._grad_norm if self._grad_norm is not None else grad_norm
            finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.consecutive_skips = 0
            if sched is not None:
                sched.step()
        else:
            opt.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.consecutive_skips += 1
            scale = f", fp16 loss scale now {scaler.get_scale():g}" if scaler is not None else ""
            log.warning("non-finite loss or gradient at batch %d (loss=%s, grad_norm=%s): step skipped%s",
                        self.batches_seen, float(loss), float(grad_norm), scale)
            limit = self.bptt.max_consecutive_skips
            if limit and self.consecutive_skips > limit:
                raise RuntimeError(
                    f"{self.consecutive_skips} non-finite steps in a row (batches {self.batches_seen - limit}-"
                    f"{self.batches_seen}; bptt.max_consecutive_skips={limit}): training has diverged and cannot "
                    f"recover by skipping. The weights are finite (skipped steps never update them) and the last "
                    f"checkpoint holds them; look at the per-layer diagnostics (surprise, memory_weight_norm, "
                    f"forget) and lower optimizer.lr or memory.max_lr, or raise the limit (0 = never stop).")
        self.last_losses.append(float(loss))
        bs = input_ids.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/grad_norm", grad_norm, batch_size=bs)
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=bs)
        self.log("train/lr", opt.param_groups[0]["lr"], batch_size=bs)
        if self.bptt.align_reg > 0 and self.last_align is not None:
            align_sum, align_weight = self.last_align
            self.log("train/align_loss", -self.bptt.align_reg * align_sum, batch_size=bs)  # its part of train/loss
            self.log("train/align_cos", align_sum / align_weight.clamp_min(1e-12), batch_size=bs)  # should rise
        return loss

    def _clip(self) -> Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return torch.zeros(())
        max_norm = self.bptt.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        # FSDP2: sharded (DTensor) gradients give a DTensor norm, already reduced over the ranks' shards
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def on_before_optimizer_step(self, optimizer) -> None:
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:  # fp16: gradients unscaled by now
            self._grad_norm = self._clip()

    def configure_model(self) -> None:
        shard = getattr(self._trainer.strategy, "shard_model", None) if self._trainer is not None else None
        if shard is not None:  # trainer=fsdp (titans.training.strategies.FSDP2Strategy)
            shard(self.model)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        input_ids, answer_mask = batch["input_ids"], batch["answer_mask"]
        targets = shift_targets(batch["labels"])
        answer_next = torch.cat([answer_mask[:, 1:], torch.zeros_like(answer_mask[:, :1])], dim=1)
        next_ids = torch.cat([input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])], dim=1)
        wrong = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        def score(start: int, positions: Tensor, logits: Tensor) -> None:
            pos = positions + start
            miss = (logits.argmax(-1) != next_ids[:, pos]) & answer_next[:, pos]
            wrong.logical_or_(miss.any(1))

        loss, _ = self.run_segments(input_ids, targets, extra_mask=answer_next, on_logits=score)
        # Teacher-forced argmax on every answer token == greedy decoding reproduces the answer exactly.
        has_answer = answer_mask.any(1)
        acc = (~wrong & has_answer).float().sum() / has_answer.float().sum().clamp_min(1)
        bs = input_ids.shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("val/answer_acc", acc, prog_bar=True, batch_size=bs, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: the freeze setting (curriculum stage `freeze`) froze the whole "
                             "model; use freeze=memory with a memory variant, or freeze=lora / none.")
        opt = self.optimizer_fn(params) if self.optimizer_fn is not None else torch.optim.AdamW(params, lr=3e-4)
        if self.scheduler_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_fn(opt), "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from titans.training.checkpoint import model_arch

        # plain containers only: the checkpoint loads with torch.load(weights_only=True)
        checkpoint["titans"] = {"batches_seen": self.batches_seen, "skipped_steps": self.skipped_steps,
                                "consecutive_skips": self.consecutive_skips, "bptt": asdict(self.bptt),
                                "arch": model_arch(self.model)}
        for lg in self._trainer.loggers if self._trainer is not None else []:
            if type(lg).__name__ == "WandbLogger" and lg.version:  # a resumed run continues this W&B run
                checkpoint["titans"]["wandb_id"] = str(lg.version)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("titans", {})
        self.batches_seen = int(state.get("batches_seen", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))

"""titans-pytorch 0.5.5's `NeuralMemory` behind our memory's call contract: the peer in the CPU proof.

    model, tok = build_model(model_cfg, memory_cfg)    # a patched model (MAG or MAL)
    use_titans_pytorch_memory(model)                    # each layer's memory -> PeerMemory (titans-pytorch)

or, through the Hydra configs, `++memory.memory_impl=benchmarks.peers.titans_pytorch.use_titans_pytorch_memory`
(`experiments.cpu_proof --variants titans_pytorch` does that on top of `experiment=cpu_proof_mag`): the same
model, placement, gate, curriculum and evaluation as `mag`, only the memory is lucidrains' implementation.

`PeerMemory(config)` builds the peer from our `MemoryConfig` and behaves like our `NeuralMemory`:
`y, state = memory(x [B, T, dim], state)`, any T, with a state (`PeerMemoryState`) the cache can detach,
select rows of, move and carry across segments. Every knob the peer has is set to ours:

    ours (MemoryConfig)                   titans-pytorch NeuralMemory(...)
    dim, heads, head_dim                  dim, heads, dim_head
    depth, expansion                      model=MemoryMLP(head_dim, depth, expansion_factor=expansion)
                                          mem_model_norm_add_residual=False (ours: M(k) = k W, no norm/residual)
    chunk_size                            chunk_size, and batch_size=chunk_size: the inner gradient of a chunk
                                          is taken at the weights after the previous chunk (Eq. 16-18), as ours.
                                          The peer's default (batch_size=None) takes every gradient at M_0.
    momentum, momentum_bias_init          momentum, init_momentum_bias
    max_lr, lr_bias_init                  default_step_transform_max_lr (θ = max_lr·σ(.)), init_adaptive_step_bias
    forget_bias_init                      init_decay_bias
    input_norm                            pre_rmsnorm
    qk_l2_norm                            qk_rmsnorm (RMS, not ℓ2: ‖k‖² = d; with the peer's mean-over-d inner
                                          loss a step moves M(k) by 2θ·error on the written key in both)
    output_norm                           post_rmsnorm
    SiLU after the q/k/v projections      activation=nn.SiLU()
    zero_init_output                      the peer's output projection zeroed (heads > 1)

What the peer cannot match (written in `PeerMemory.mismatches` for the config it was built from; README and
docs/evaluation.md list them for the CPU proof):
    - conv_kernel / qk_init: the peer has no causal conv after the projections, so its keys and queries see
      one token (the CPU proof's memory reads bytes: ours summarise the 15 preceding bytes and start as an
      induction memory, k_t = q_{t-1}; the peer's start random);
    - the forget gate α is one value per chunk (from the chunk's mean input) in the peer, per token in ours;
    - chunk_step_cap: the peer has no cap on a chunk's summed step;
    - the read: ours, tokens of chunk c read the memory after chunk c-1; the peer's last token of a chunk
      reads the memory after its own chunk (its retrieval is shifted by one token);
    - the output gate is σ(W x) per head in the peer, per channel in ours; the peer normalises the store
      and retrieve inputs with two RMSNorms (ours: one); projections keep the peer's own init (nn.Linear
      default; ours N(0, init_std)); the peer's gate weights start at zero (init_*_bias), ours N(0, init_std);
    - fixed_lr / fixed_momentum_decay / fixed_forget, forgetting=False, per_token_gates=False, surprise_clip
      (the peer's max_grad_norm is a soft clamp), a deep memory's activation (the peer's MemoryMLP uses GELU),
      compile: not expressible; recorded as mismatches;
    - the peer's per-head initial weights M_0 are expanded views of one tensor (an optimizer step on them
      fails); the adapter gives each head its own copy (the same values), so they train as intended;
    - no aux: `return_aux=True` (output_memory_aux, the training's memory diagnostics, gate_reg/align_reg)
      raises; a state cannot be saved with `titans.cache.save_cache`.

Streaming: the peer is exact across calls only when every call starts at a chunk boundary (its retrieval
aligns chunks from the call's first stored token). `PeerMemory.forward` cuts a call that starts inside a
chunk at the chunk's last token, so one call on a sequence equals any split of it (tests/benchmarks/
test_peer_memory.py), as the streaming evaluation (segments, then one token at a time) needs.

einops letters: b batch, h heads, o momentum orders, n tokens, d features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from titans.memory import MemoryConfig, NeuralMemory

PEER_VERSION = "0.5.5"

__all__ = ["PEER_VERSION", "PeerMemory", "PeerMemoryState", "peer_kwargs", "use_titans_pytorch_memory"]


def _peer():
    """The titans_pytorch module, checked to be the version the adapter was written against."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import titans_pytorch
        got = version("titans-pytorch")
    except (ImportError, PackageNotFoundError) as e:
        raise ImportError(f"the titans_pytorch peer needs titans-pytorch=={PEER_VERSION}: "
                          f'pip install -e ".[bench]" ({e})') from e
    if got != PEER_VERSION:
        raise ImportError(f"the titans_pytorch adapter is written against titans-pytorch=={PEER_VERSION}, found "
                          f"{got}; install {PEER_VERSION} (pip install -e \".[bench]\").")
    return titans_pytorch


def peer_kwargs(config: MemoryConfig) -> tuple[dict, list[str]]:
    """(keyword arguments of titans-pytorch's `NeuralMemory` closest to `config`, the settings it cannot match)."""
    if not isinstance(config, MemoryConfig):
        raise TypeError(f"peer_kwargs(config=...) needs a MemoryConfig, got {type(config).__name__}")
    c = config
    if c.heads == 1 and c.head_dim != c.dim:
        raise ValueError(f"MemoryConfig.head_dim={c.head_dim} with heads=1: titans-pytorch needs head_dim == dim "
                         f"({c.dim}) for one head; use heads > 1 or head_dim=None.")
    mlp = _peer().MemoryMLP(c.head_dim, depth=c.depth, expansion_factor=float(c.expansion))
    kwargs = dict(
        dim=c.dim, dim_head=c.head_dim, heads=c.heads, chunk_size=c.chunk_size, batch_size=c.chunk_size,
        model=mlp, mem_model_norm_add_residual=False,
        momentum=c.momentum, init_momentum_bias=c.momentum_bias_init if c.momentum else None,
        default_step_transform_max_lr=c.max_lr, init_adaptive_step_bias=c.lr_bias_init,
        init_decay_bias=c.forget_bias_init,
        pre_rmsnorm=c.input_norm, qk_rmsnorm=c.qk_l2_norm, post_rmsnorm=c.output_norm, activation=nn.SiLU(),
    )
    mismatches = []
    if c.conv_kernel:
        mismatches.append(f"conv_kernel={c.conv_kernel}: no causal conv in the peer (its keys see one token)")
    if c.qk_init != "random":
        mismatches.append(f"qk_init={c.qk_init!r}: the peer's q/k projections start random")
    if c.qk_activation != "silu":
        mismatches.append(f"qk_activation={c.qk_activation!r}: the peer's queries and keys pass SiLU")
    if c.qk_center:
        mismatches.append("qk_center=True: the peer does not centre queries and keys")
    if c.tie_keys:
        mismatches.append("tie_keys=True: the peer's key and query projections learn apart")
    if c.qk_features != "none":
        mismatches.append(f"qk_features={c.qk_features!r}: the peer's queries and keys have no feature map")
    if c.min_lr > 0:
        mismatches.append(f"min_lr={c.min_lr}: the peer writes every token (no floor on θ)")
    if c.gate_keys:
        mismatches.append("gate_keys=True: the peer's gates see the token's input only")
    if c.chunk_step_cap:
        mismatches.append(f"chunk_step_cap={c.chunk_step_cap}: the peer does not cap a chunk's summed step")
    if c.forgetting and c.fixed_forget is None:
        mismatches.append("forget gate: one α per chunk (chunk-mean input) in the peer, per token here")
    mismatches.append("read: the peer's last token of a chunk reads the memory after its own chunk")
    if c.output_gate:
        mismatches.append("output gate: per head in the peer, per channel here")
    for key, value in (("fixed_lr", c.fixed_lr), ("fixed_momentum_decay", c.fixed_momentum_decay),
                       ("fixed_forget", c.fixed_forget)):
        if value is not None:
            mismatches.append(f"{key}={value}: the peer's gates are always learned")
    if not c.forgetting:
        mismatches.append("forgetting=False: the peer always has a learned decay")
    if not c.per_token_gates:
        mismatches.append("per_token_gates=False: the peer's θ is per token")
    if c.surprise_clip:
        mismatches.append(f"surprise_clip={c.surprise_clip}: not applied (the peer's max_grad_norm is a soft clamp)")
    if c.depth > 1 and c.activation != "gelu":
        mismatches.append(f"activation={c.activation!r}: the peer's deep MemoryMLP uses GELU")
    if c.compile:
        mismatches.append("compile=True: the peer runs eagerly")
    return kwargs, mismatches


@dataclass
class PeerMemoryState:
    """What the peer memory carries between calls, batch first so the cache's row operations apply.

    weights:     name -> `[B, H, *param_shape]`, the weights the next chunk's inner gradient is taken at
    last_update: name -> `[B, H, *param_shape]`, the memory after the last complete chunk (what it reads)
    momentum:    name -> `[B, H, O, *param_shape]` (O momentum orders; zeros or empty without momentum)
    buffer:      `[B, r, dim]`, the inputs of the unfinished chunk (r < chunk_size)
    offset:      tokens seen so far
    """

    weights: dict[str, Tensor]
    last_update: dict[str, Tensor]
    momentum: dict[str, Tensor]
    buffer: Tensor
    offset: int = 0

    @property
    def batch_size(self) -> int:
        return self.buffer.shape[0]

    def _map(self, fn) -> PeerMemoryState:
        return PeerMemoryState(
            weights={k: fn(v) for k, v in self.weights.items()},
            last_update={k: fn(v) for k, v in self.last_update.items()},
            momentum={k: fn(v) for k, v in self.momentum.items()},
            buffer=fn(self.buffer),
            offset=self.offset,
        )

    def detach(self) -> PeerMemoryState:
        """Cut the autograd graph (end of a bptt window)."""
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> PeerMemoryState:
        return self._map(lambda t: t.to(*args, **kwargs))

    def select(self, index: Tensor | list[int]) -> PeerMemoryState:
        """Rows `index` of the batch."""
        index = torch.as_tensor(index, device=self.buffer.device)
        return self._map(lambda t: t.index_select(0, index))

    def to_tensors(self, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, str]]:
        raise TypeError("a titans-pytorch memory state cannot be saved with titans.cache.save_cache: the peer "
                        "adapter is for side-by-side benchmarks (streaming in one process), not for deployment.")

    # the peer's NeuralMemState <-> this
    @classmethod
    def from_peer(cls, state, heads: int, offset: int) -> PeerMemoryState:
        def split(td, pattern: str) -> dict[str, Tensor]:
            return {k: rearrange(v, pattern, h=heads) for k, v in dict(td.items()).items()}

        last_update, momentum = state.states
        return cls(
            weights=split(state.weights, "(b h) ... -> b h ..."),
            last_update=split(last_update, "(b h) ... -> b h ..."),
            momentum=split(momentum, "o (b h) ... -> b h o ...") if momentum is not None else {},
            buffer=state.cache_store_segment,
            offset=offset,
        )

    def to_peer(self):
        from tensordict import TensorDict

        neural_mem_state = _peer().NeuralMemState

        def merge(d: dict[str, Tensor], pattern: str) -> TensorDict:
            return TensorDict({k: rearrange(v, pattern) for k, v in d.items()})

        momentum = merge(self.momentum, "b h o ... -> o (b h) ...")
        return neural_mem_state(
            seq_index=self.offset - self.buffer.shape[1],  # tokens written in complete chunks
            weights=merge(self.weights, "b h ... -> (b h) ..."),
            cache_store_segment=self.buffer,
            states=(merge(self.last_update, "b h ... -> (b h) ..."), momentum),
            updates=None,
        )


class PeerMemory(nn.Module):
    """titans-pytorch's `NeuralMemory` (as `self.peer`) with our `NeuralMemory`'s contract: `y, state = mem(x, state)`.

    x, y: `[B, T, dim]`, any T >= 1; state: a `PeerMemoryState` or None (a new sequence). `config` is the
    `MemoryConfig` the peer was matched to (kept for reference), `mismatches` what it could not match.
    """

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__()
        kwargs, self.mismatches = peer_kwargs(config)
        self.config = config
        self.peer = _peer().NeuralMemory(**kwargs)
        # the peer's per-head initial weights are `repeat(p, '... -> h ...')` views whose heads share storage:
        # an optimizer's in-place step (and load_state_dict) refuses them. Own copies, same values.
        params = self.peer.memory_model_parameters
        for i, p in enumerate(params):
            params[i] = nn.Parameter(p.detach().clone())
        if config.zero_init_output and config.heads > 1:
            nn.init.zeros_(self.peer.combine_heads.weight)

    def forward(self, x: Tensor, state: PeerMemoryState | None = None,
                return_aux: bool = False) -> tuple[Tensor, PeerMemoryState]:
        c = self.config
        if return_aux:
            raise ValueError("the titans-pytorch peer reports no memory aux (gates, surprise, errors): "
                             "output_memory_aux, memory diagnostics, bptt.gate_reg and bptt.align_reg need our "
                             "NeuralMemory.")
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != c.dim or x.shape[1] == 0:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"PeerMemory input x: expected a float tensor [B, T >= 1, dim={c.dim}], got {got}")
        if state is not None:
            if not isinstance(state, PeerMemoryState):
                raise TypeError(f"PeerMemory state must be a PeerMemoryState or None, got {type(state).__name__} "
                                f"(a cache filled by our NeuralMemory cannot continue in the peer)")
            if state.batch_size != x.shape[0]:
                raise ValueError(f"state has batch size {state.batch_size} but x has batch size {x.shape[0]}")
        outs = []
        for piece in self._aligned_pieces(x, state):
            y, peer_state = self.peer(piece, state=state.to_peer() if state is not None else None)
            offset = (state.offset if state is not None else 0) + piece.shape[1]
            state = PeerMemoryState.from_peer(peer_state, c.heads, offset)
            outs.append(y)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), state

    def _aligned_pieces(self, x: Tensor, state: PeerMemoryState | None) -> list[Tensor]:
        """x cut so that every piece that completes a chunk starts at a chunk boundary or is one token.

        The peer aligns its retrieval chunks to the first stored token of a call; a call that starts r tokens
        into a chunk would read the memory r tokens late. So the tokens up to the chunk's last one go first,
        then that last token alone (it completes the chunk, and reads it, as in one long call), then the rest.
        """
        r = state.buffer.shape[1] if state is not None else 0
        C = self.config.chunk_size
        if r == 0 or r + x.shape[1] < C:
            return [x]
        head = C - r - 1  # tokens before the one that completes the chunk
        pieces = [x[:, :head]] if head else []
        pieces.append(x[:, head : head + 1])
        if x.shape[1] > head + 1:
            pieces.append(x[:, head + 1 :])
        return pieces


def use_titans_pytorch_memory(model: nn.Module) -> nn.Module:
    """Swap the memory of every patched layer of `model` (a `patch_qwen3` model) for a `PeerMemory` built from
    that memory's `MemoryConfig`, on the same device and dtype; returns `model`. Everything else (attention,
    window, the memory gate, where the memory sits) stays. Used as `memory.memory_impl` by the training builder.
    """
    from titans.patch import titans_layers

    layers = titans_layers(model)
    mac = sorted(i for i, layer in layers.items() if layer.variant == "mac")
    if mac:
        raise ValueError(f"use_titans_pytorch_memory: layers {mac} are MAC, which reads our memory's weights "
                         "directly (long-term tokens); the peer adapter supports MAG and MAL.")
    swapped = 0
    for layer in layers.values():
        if isinstance(layer.memory, NeuralMemory):
            old = layer.memory.to_qkv.weight
            layer.memory = PeerMemory(layer.memory.config).to(device=old.device, dtype=old.dtype)
            swapped += 1
    if not swapped:
        raise ValueError(f"use_titans_pytorch_memory: the model has no memory to swap ({len(layers)} patched layers, "
                         "none with our NeuralMemory); patch it with a memory variant (mag, mal, mac) first.")
    return model

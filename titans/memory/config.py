"""`MemoryConfig`: every switch of the neural memory, validated at construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ACTIVATIONS = ("silu", "gelu", "relu")
QK_INITS = ("random", "induction")
QK_ACTIVATIONS = ("silu", "none")
QK_FEATURES = ("none", "pairs", "bilinear")
NONFINITE = ("error", "skip")


def config_error(owner: str, key: str, value: object, allowed: str, fix: str = "") -> None:
    """Raise the project's config error: names the field, the value got, what is allowed and the fix."""
    msg = f"{owner}.{key}={value!r} is invalid: allowed {allowed}."
    if fix:
        msg += f" {fix}"
    raise ValueError(msg)


def _fail(key: str, value: object, allowed: str, fix: str = "") -> None:
    config_error("MemoryConfig", key, value, allowed, fix)


class DictRoundTrip:
    """`to_dict()` / `from_dict()` for the config dataclasses; unknown keys are a clear error."""

    _unknown_hint = ""  # appended to the unknown-key error
    _internal_keys: frozenset[str] = frozenset()  # filled by code, not offered to users

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown options {unknown}; allowed: "
                             f"{sorted(known - cls._internal_keys)}.{cls._unknown_hint}")
        return cls(**data)


@dataclass
class MemoryConfig(DictRoundTrip):
    """Configuration of one `NeuralMemory`.

    Shapes: the memory reads and writes `[B, T, dim]`; inside it works on `heads` heads of
    `head_dim` features, each head with its own memory MLP `[..., head_dim] -> [..., head_dim]`.
    """

    dim: int
    heads: int = 1
    head_dim: int | None = None  # default: dim // heads
    depth: int = 2  # memory MLP layers L_M; 1 = linear memory (paper §3.1)
    expansion: int = 4  # hidden width of a deep memory = expansion * head_dim
    activation: str = "silu"  # between memory MLP layers
    chunk_size: int = 64  # tokens whose inner gradients share the chunk-start weights (Eq. 16-18)

    # §4.4 projections
    input_norm: bool = True  # RMSNorm on the memory's input (scale invariance; keeps deep memories finite)
    qk_l2_norm: bool = True
    conv_kernel: int = 4  # causal depthwise conv after the q/k/v projections; 0 = off
    # "random": the paper's init. "induction": start as an induction memory — the key projection equals the
    # query projection and the key conv is the query conv shifted one token back, so token t is written under
    # the context of tokens t-1..t-K+1 and a later query with the same context reads what followed it.
    qk_init: str = "random"
    # keys stay the queries one token back through training, not only at init: k_t = q_{t-1} (W_k := W_q, the key
    # conv := the query conv one tap later; the key's own rows and taps are unused). A trained CPU-proof MAG's
    # induction drifted: the query at a question and the key its link wrote, over the same 15 bytes, had cosine
    # 0.65, against 0.32 for a distractor's key — a blurred read where an exact one was free. Needs
    # qk_init="induction". False: keys and queries learn apart (the paper's form).
    tie_keys: bool = False
    # activation of queries and keys after the conv (values always get SiLU). "silu": the paper's §4.4. "none":
    # linear queries/keys — SiLU's outputs are mostly positive, so ℓ2-normed keys share one direction (mean cosine
    # 0.8 between a trained proof model's haystack keys) and every write disturbs every other key's read.
    qk_activation: str = "silu"
    # subtract a running mean from queries and keys before the ℓ2 norm (per head; a buffer updated by every call
    # in training mode, fixed in eval mode). Without it a trained proof model's keys share one direction (mean
    # pairwise cosine 0.81 over a stream, 0.006 once the stream mean is removed): most of every write goes to that
    # shared direction, which every later write overwrites. False: the paper's form.
    qk_center: bool = False
    # a feature map on queries and keys after activation and centring, before the ℓ2 norm (per head). "pairs":
    # φ(k)_i = k_i · k_{(i+1) mod d}, conjunctions of two channels. Each channel of a conv'd key is a linear function
    # of the K bytes before the token, so two contexts that share the last byte share a share of every channel; a
    # product is large only where both channels agree, which squares that overlap (cosine ~ cos²) — the read is
    # addressed by the whole context ("the user id AND the last byte"), not mostly by the last byte (a CPU-proof MAG
    # misspelt 8-pair lookups by continuing the previous character as a distractor did). The memory's key and query
    # keep head_dim entries; the induction init (k_t = q_{t-1}) holds. "bilinear": φ(x) = (A_h x) ⊙ (B_h x) with
    # learned per-head A_h, B_h (d × d, Gaussian at init: E[φ(q)·φ(k)] = (q·k)², a random-feature degree-2
    # polynomial kernel, so after the ℓ2 norm two keys at cosine c read each other at ~c²). A linear memory reads
    # Σ_i v_i (k_i·q): keys that share a template (8 links "The access token for User_xxxxx is", cosine ~0.5)
    # each add half a value to the read; squared, a quarter. "none": the paper's form.
    qk_features: str = "none"

    # data-dependent gates θ_t (lr), η_t (momentum_decay), α_t (forget)
    per_token_gates: bool = True  # False: one value per chunk, from the chunk's mean input
    # the gates also see the key: logits = W_g x_t + b + W_gk k̃_t, with k̃_t the key after the causal conv and its
    # activation (before centring and ℓ2 norm; W_gk zero at init). The key summarises the conv_kernel − 1 tokens
    # before t, so what to write (θ), keep (η) and forget (α) can depend on context, not on token t alone — a
    # memory in layer 0 of a byte model otherwise sees only the byte: a trained CPU-proof memory wrote haystack
    # bytes with θ 0.076 against the needle's 0.12. False: the paper's form (gates from x_t).
    gate_keys: bool = False
    max_lr: float = 0.1  # θ_t = max_lr * sigmoid(.); deep memories diverge for θ ≳ 0.1 (see the demo)
    lr_bias_init: float = 0.0  # θ ≈ max_lr / 2 at init
    # sparse writes: a token whose θ_t (after the gate, before the chunk step cap) is below min_lr writes nothing
    # (θ_t = 0, no gradient through it). A memory trained at <= 4K tokens still writes its haystack with a small θ
    # (a trained CPU-proof MAG: 0.0003-0.001 against the needle's 0.02-0.04); over a million tokens those writes add
    # up and drown the needle (pass key at 1M 0%). 0 = off (the paper's form: every token writes).
    min_lr: float = 0.0
    momentum: bool = True  # False: S_t = -θ_t ∇ℓ (no past surprise)
    momentum_bias_init: float = 2.0  # η ≈ 0.88 at init
    forgetting: bool = True  # False: α_t = 0
    forget_bias_init: float = -6.0  # α ≈ 0.0025 at init: ~85% of M survives a 64-token chunk
    # constants that replace a learned gate (ablations, tests); None = learned
    fixed_lr: float | None = None
    fixed_momentum_decay: float | None = None
    fixed_forget: float | None = None
    surprise_clip: float = 0.0  # clip each token's surprise (gradient) norm to this; 0 = off
    # MemoryMAG's surprise-gated writes: a token whose surprise ‖∇ℓ_t‖ (aux "surprise", at the chunk-start
    # weights) is below this does not write (θ_t = 0; momentum and forgetting still run); 0 = every token writes
    write_threshold: float = 0.0
    # MemoryMAG's stop-gradient fast updates (the cheap mode for ablations): the outer loop does not backpropagate
    # through the inner updates. Values are unchanged; the weights after each chunk pass gradient to the weights
    # before it as the identity (straight-through), so M_0 and the read path (queries, output) learn, while the
    # write path (keys, values, θ/η/α) gets no gradient from the memory's reads.
    stop_grad_updates: bool = False
    # cap on Σ_j of the chunk's step coefficients (θ scaled down when exceeded); 0 = off (paper-exact).
    # Without it, correlated keys in a chunk add their stale-gradient steps and the memory diverges.
    chunk_step_cap: float = 1.0

    # a token whose input holds NaN/inf: "error" (raise, naming its batch row and token) or "skip" (its write is
    # skipped: it enters the conv and gates as a zero input with θ = 0, and its output is NaN); either way the
    # memory state is never poisoned
    nonfinite: str = "error"

    # output
    output_norm: bool = True
    output_gate: bool = True
    init_std: float = 0.02  # std of the projections; memory MLP init is scaled by fan-in
    zero_init_output: bool = False  # zero the output projection (identity-at-init when patched)

    # execution
    # torch.compile the forward (inductor; fused forward and backward kernels). Same results to float rounding;
    # each new input shape / state layout compiles once (minutes for a deep memory), so it pays off in training.
    compile: bool = False
    # torch.compile the deep memory's chunk loop (`titans.memory.chunk_fused`: the fused op's forward loop and its
    # hand-written backward loop, each unrolled over blocks of 8 chunks as a plain tensor function — no autograd
    # inside, so it compiles in ~50 s, ~9 s from inductor's on-disk cache, where `compile` alone on a deep memory
    # did not finish). Same results to float rounding; one graph per (configuration, batch, block length, dtype);
    # forwards without a backward stay eager. The default MAG's training step on qwen3_tiny: 4.0x -> 3.3x the
    # sliding-window step (docs/performance.md). With `compile` too, the forward around the op compiles (the op is a
    # graph break): 3.1x. Needs the fused scan: depth >= 2, no surprise_clip, write_threshold or stop_grad_updates.
    compile_scan: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim <= 0:
            _fail("dim", self.dim, "a positive int")
        if not isinstance(self.heads, int) or self.heads <= 0:
            _fail("heads", self.heads, "a positive int")
        if self.head_dim is None:
            if self.dim % self.heads:
                _fail("heads", self.heads, f"a divisor of dim={self.dim}", "Or set head_dim explicitly.")
            self.head_dim = self.dim // self.heads
        if not isinstance(self.head_dim, int) or self.head_dim <= 0:
            _fail("head_dim", self.head_dim, "a positive int or None")
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 4:
            _fail("depth", self.depth, "an int in 1..4 (1 = linear memory)")
        if not isinstance(self.expansion, int) or self.expansion <= 0:
            _fail("expansion", self.expansion, "a positive int")
        if self.activation not in ACTIVATIONS:
            _fail("activation", self.activation, f"one of {ACTIVATIONS}")
        if not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
            _fail("chunk_size", self.chunk_size, "a positive int (1 = exact token recurrence)")
        if not isinstance(self.conv_kernel, int) or self.conv_kernel < 0:
            _fail("conv_kernel", self.conv_kernel, "an int >= 0 (0 = no convolution)")
        if self.qk_init not in QK_INITS:
            _fail("qk_init", self.qk_init, f"one of {QK_INITS}")
        if self.qk_activation not in QK_ACTIVATIONS:
            _fail("qk_activation", self.qk_activation, f"one of {QK_ACTIVATIONS}")
        if self.qk_features not in QK_FEATURES:
            _fail("qk_features", self.qk_features, f"one of {QK_FEATURES}")
        for key in ("qk_center", "tie_keys", "gate_keys", "stop_grad_updates", "compile", "compile_scan"):  # switches
            if not isinstance(getattr(self, key), bool):
                _fail(key, getattr(self, key), "True or False")
        if self.gate_keys and not self.per_token_gates:
            _fail("gate_keys", self.gate_keys, "False when per_token_gates=False",
                  "Per-chunk gates come from the chunk's mean input; set per_token_gates=True to gate on keys.")
        if self.tie_keys and self.qk_init != "induction":
            _fail("tie_keys", self.tie_keys, "False unless qk_init='induction'",
                  "Tied keys are the queries one token back: the induction init's structure, kept.")
        if self.qk_init == "induction" and self.conv_kernel < 2:
            _fail("conv_kernel", self.conv_kernel, "an int >= 2 when qk_init='induction'",
                  "The shifted key needs at least one token of conv context.")
        if self.max_lr < 0:
            _fail("max_lr", self.max_lr, "a float >= 0")
        for key in ("fixed_lr", "fixed_momentum_decay", "fixed_forget"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= (1.0 if key != "fixed_lr" else float("inf")):
                _fail(key, value, "None (learned) or a float in [0, 1]" if key != "fixed_lr" else "None or >= 0")
        if self.chunk_step_cap < 0:
            _fail("chunk_step_cap", self.chunk_step_cap, "a float >= 0 (0 = off)")
        if self.surprise_clip < 0:
            _fail("surprise_clip", self.surprise_clip, "a float >= 0 (0 = off)")
        if isinstance(self.min_lr, bool) or not isinstance(self.min_lr, int | float) \
                or not 0 <= self.min_lr < self.max_lr:
            _fail("min_lr", self.min_lr, f"a float in [0, max_lr={self.max_lr}) (0 = every token writes)")
        if isinstance(self.write_threshold, bool) or not isinstance(self.write_threshold, int | float) \
                or self.write_threshold < 0:
            _fail("write_threshold", self.write_threshold, "a float >= 0 (0 = every token writes)")
        if self.nonfinite not in NONFINITE:
            _fail("nonfinite", self.nonfinite, f"one of {NONFINITE}")
        if self.compile_scan:
            if self.depth < 2:
                _fail("compile_scan", True, "False when depth=1",
                      "A linear memory runs titans.memory.linear, not the fused deep-memory loop it compiles.")
            lacking = [k for k in ("surprise_clip", "write_threshold", "stop_grad_updates")
                       if getattr(self, k)]
            if lacking:
                _fail("compile_scan", True, f"False when {lacking[0]}={getattr(self, lacking[0])!r}",
                      "Those run the plain chunk loop, not the fused op whose loops it compiles.")
        if self.init_std <= 0:
            _fail("init_std", self.init_std, "a float > 0")

    @property
    def inner_dim(self) -> int:
        """Width of all heads together, `heads * head_dim`."""
        return self.heads * self.head_dim

    @property
    def hidden_dim(self) -> int:
        """Hidden width of a deep memory MLP."""
        return self.expansion * self.head_dim

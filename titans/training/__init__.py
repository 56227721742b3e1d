"""Training: Lightning module with chunked BPTT-through-TTT, data, callbacks, `run.train(cfg)`.

Hydra stays at the edges: `run.train(cfg)` and the builders read configs; the Lightning module,
data module and callbacks take plain arguments and finished parts.
"""

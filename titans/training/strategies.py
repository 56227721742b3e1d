"""Strategy factories that need Python objects a YAML file cannot name.

`fsdp_strategy`: fully sharded data parallel with FSDP2 (`torch.distributed.fsdp.fully_shard`) through
Lightning's `ModelParallelStrategy`. One FSDP unit per decoder layer plus one root unit (embeddings, final
norm, tied LM head), all on a 1-D data-parallel mesh over every process. The sharding happens in
`TitansLitModule.configure_model`, which calls `FSDP2Strategy.shard_model`.

Why FSDP2 and not Lightning's `FSDPStrategy` (FSDP1): FSDP1 puts a root unit around the LightningModule and
runs `training_step` inside its forward, and `TitansLitModule` calls `manual_backward` inside `training_step`
(once per bptt window), which FSDP1 rejects ("Expects BACKWARD_PRE or BACKWARD_POST state but got
HandleTrainingState.FORWARD"). FSDP2 has no such root state machine: each unit all-gathers in its own
forward and backward, so several backward calls per step accumulate sharded gradients like DDP's. It also
runs on CPU with gloo, which FSDP1 under Lightning refuses.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from titans.compat import enable_activation_checkpointing


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The Qwen3 decoder layers of `model` (patched layers subclass `Qwen3DecoderLayer`), in order."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    return [m for m in model.modules() if isinstance(m, Qwen3DecoderLayer)]


class FSDP2Strategy(ModelParallelStrategy):
    """`ModelParallelStrategy` used for data parallelism only: a (world_size, 1) mesh, no tensor parallelism.

    reshard_after_forward: free the gathered weights after each unit's forward (ZeRO-3; False keeps them until
    backward, ZeRO-2-like: more memory, fewer all-gathers). activation_checkpointing: recompute each decoder
    layer in backward (the model's own `gradient_checkpointing_enable`, as top-level `gradient_checkpointing`
    does; patched layers keep their cache). cpu_offload: keep the sharded parameters, gradients and optimizer
    state on the CPU (`CPUOffloadPolicy`; GPU only). save_distributed_checkpoint: False (default) gathers
    the full state on rank 0 into one `last.ckpt` file, loadable without torch.distributed; True writes a
    folder with one shard per rank.
    """

    def __init__(self, reshard_after_forward: bool = True, activation_checkpointing: bool = False,
                 cpu_offload: bool = False, save_distributed_checkpoint: bool = False, **kwargs) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.reshard_after_forward = reshard_after_forward
        self.activation_checkpointing = activation_checkpointing
        self.cpu_offload = cpu_offload

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" sizes are data_parallel = nodes, tensor_parallel = devices per node
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard_model(self, model: nn.Module) -> None:
        """Apply `fully_shard` to every decoder layer, then to `model` (idempotent: a sharded model is left)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

        if isinstance(model, FSDPModule):
            return
        layers = decoder_layers(model)
        if not layers:
            raise ValueError(f"trainer=fsdp shards per decoder layer, but {type(model).__name__} has no "
                             f"Qwen3DecoderLayer; use trainer=ddp for this model.")
        if self.activation_checkpointing:
            enable_activation_checkpointing(model)
        mesh = self.device_mesh["data_parallel"]
        options = {"mesh": mesh, "offload_policy": CPUOffloadPolicy() if self.cpu_offload else None}
        options = {k: v for k, v in options.items() if v is not None}
        for layer in layers:
            fully_shard(layer, reshard_after_forward=self.reshard_after_forward, **options)
        fully_shard(model, reshard_after_forward=False, **options)  # root: used again at once by the next segment


def fsdp_strategy(reshard_after_forward: bool = True, activation_checkpointing: bool = False,
                  cpu_offload: bool = False, **kwargs) -> FSDP2Strategy:
    """`FSDP2Strategy` (conf/trainer/fsdp.yaml); extra keyword arguments go to `ModelParallelStrategy`."""
    return FSDP2Strategy(reshard_after_forward=reshard_after_forward, activation_checkpointing=activation_checkpointing,
                         cpu_offload=cpu_offload, **kwargs)

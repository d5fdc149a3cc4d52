"""DeepSpeed ZeRO training engine: the same interface as `TorchTrainingEngine` (`accumulate`, `step`, `save`,
`load`, `learning_rate`) plus `full_state_dict` and `save_pretrained`, which gather ZeRO-3 partitions.

Every rank of a worker group holds one of these; they share one torch.distributed group (gloo on CPU, NCCL on
GPU) that `init_distributed` sets up. Calls that gather or reduce (a forward or backward under ZeRO-3,
`accumulate`, `step`, `full_state_dict`, `save`, `load`) must be made on every rank, in the same order.

CPU without minutes of JIT builds (see PLATFORM.md): DeepSpeed's shared-memory communication op is not built
(gloo does the communication), and the optimizer is torch's AdamW passed in as a client optimizer rather
than DeepSpeed's fused or CPU Adam (which would compile first). Optimizer / parameter offload
(`offloadOptimizer`, `offloadParams`) switch to DeepSpeed's CPU Adam, which compiles on first use (~2.5 min).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kuberlhf.engines.learning_rate import set_base_learning_rate
from kuberlhf.engines.weight_transfer import TensorMeta

TAG = "state"


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, bind_address: str,
                     listen_fd: int | None = None) -> None:
    """Join the group's torch.distributed group (gloo on CPU, NCCL on GPU) and hand it to DeepSpeed.

    Rank 0 hosts the rendezvous store on `listen_fd`, a socket bound to its node's address (`open_listener`:
    torch's own store would listen on every interface); gloo binds to the interface that carries this rank's
    `bind_address` (its node's), never to all of them."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = interface_of(bind_address)
    store = dist.TCPStore(master_addr, master_port, world_size, is_master=rank == 0, master_listen_fd=listen_fd,
                          use_libuv=True)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    _start_deepspeed_comm()


def interface_of(address: str) -> str:
    """The network interface that carries `address` (lo for 127.0.0.1)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addresses):
            return name
    raise RuntimeError(f"no network interface of this node has the address {address}")


def join_existing_group() -> None:
    """Use the torch.distributed group someone else (Ray Train) already started for DeepSpeed."""
    _start_deepspeed_comm()


def _start_deepspeed_comm(**group: int) -> None:
    comm = importlib.import_module("deepspeed.comm.torch")  # the module, not the `torch` attribute it shadows
    comm.build_shm_op = lambda: None  # gloo instead of an ~80 s JIT build on every start
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, **group)


class DeepSpeedTrainingEngine:
    def __init__(self, model: nn.Module, setup: Any) -> None:
        """`setup`: a `TrainingSetup` (engines/training.py)."""
        import deepspeed

        self.zero_stage = setup.zero_stage
        self.accumulation_steps = setup.accumulation_steps
        zero: dict[str, Any] = {"stage": setup.zero_stage}
        if setup.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if setup.offload_params:
            zero["offload_param"] = {"device": "cpu"}
        config = {
            "train_micro_batch_size_per_gpu": setup.micro_batch_size,
            "gradient_accumulation_steps": setup.accumulation_steps,
            "gradient_clipping": setup.max_grad_norm,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": setup.bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        optimizer = None
        adamw = {"lr": setup.learning_rate, "weight_decay": setup.weight_decay}
        if not (setup.offload_optimizer or setup.offload_params):  # offload needs DeepSpeed's compiled CPU Adam
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **adamw)
        else:
            config["optimizer"] = {"type": "AdamW", "params": adamw}
        # DeepSpeed steps the schedule at each optimizer step and keeps its state in the checkpoint.
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                                                 lr_scheduler=setup.scheduler)
        self.model = self.engine.module
        self.forward_module = self.engine  # training forwards go through DeepSpeed's engine (its bookkeeping)

    def accumulate(self, loss: torch.Tensor) -> None:
        """One micro-batch's backward; DeepSpeed reduces across ranks and steps at the accumulation boundary.
        The caller already weighted the loss by the micro-batch's share, so DeepSpeed's own 1/steps scaling
        is undone."""
        self.engine.backward(loss * self.accumulation_steps)
        self.engine.step()

    def step(self) -> float:
        """The optimizer step happened in the last `accumulate`; returns the global gradient norm."""
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights on every rank (ZeRO-3 partitions gathered first)."""
        import deepspeed

        if self.zero_stage < 3:
            return {name: t.detach().clone() for name, t in self.model.state_dict().items()}
        with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
            return {name: t.detach().clone() for name, t in self.model.state_dict().items()}

    def weight_metadata(self) -> list[TensorMeta]:
        """Names, dtypes and full shapes of the model's weights (ZeRO-3: of the whole parameters, not this
        rank's partitions), in state-dict order; nothing is gathered."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        return [TensorMeta(name, str(t.dtype).removeprefix("torch."),
                           tuple(getattr(params.get(name), "ds_shape", None) or t.shape))
                for name, t in self.model.state_dict().items()]

    def weight_buckets(self, buckets: list[list[str]]) -> Iterator[list[torch.Tensor]]:
        """The weights named by each bucket, one bucket at a time. Under ZeRO-3 every rank must iterate: each
        bucket's partitions are gathered for it alone and released when the next is asked for."""
        if self.zero_stage < 3:
            weights = self.model.state_dict()
            yield from ([weights[name] for name in names] for names in buckets)
            return
        import deepspeed

        params = dict(self.model.named_parameters(remove_duplicate=False))
        buffers = dict(self.model.named_buffers())
        for names in buckets:
            gathered = list({id(params[n]): params[n] for n in names if n in params}.values())
            with deepspeed.zero.GatheredParameters(gathered, modifier_rank=None):
                yield [params[n].data if n in params else buffers[n] for n in names]

    def save(self, path: str | Path, **extra: Any) -> None:
        """DeepSpeed checkpoint (every rank writes its partition) into directory `path`."""
        self.engine.save_checkpoint(str(path), tag=TAG, client_state=extra)

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore what `save` wrote; returns the caller's extras. Loaded with `weights_only` (tensors, plain
        values and DeepSpeed's own record types only): a checkpoint cannot run code when it is loaded."""
        self.engine.checkpoint_engine.load = load_tensors_only
        _, client_state = self.engine.load_checkpoint(str(path), tag=TAG)
        return dict(client_state or {})

    def set_learning_rate(self, learning_rate: float) -> None:
        set_base_learning_rate(self.optimizer, self.engine.lr_scheduler, learning_rate)


def load_tensors_only(path: str, map_location: Any = None) -> Any:
    """DeepSpeed's checkpoint reader without unpickling arbitrary objects (its own loads with
    weights_only=False): only DeepSpeed's record types are allowed besides tensors and plain values."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True)

"""What the trained roles' actors share: mini-batches, gradient accumulation, metrics, joining their process group
(process and device set-up, which Ray Train's workers share too, is in `engines/process.py`)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from kuberlhf.storage.transfer import StorageTarget, deliver, fetch


def minibatches(size: int, mini_batch_size: int | None, generator: torch.Generator) -> list[list[int]]:
    """A shuffled split of range(size) into mini-batches (one batch when mini_batch_size is None)."""
    order = torch.randperm(size, generator=generator).tolist()
    step = mini_batch_size or size
    return [order[start : start + step] for start in range(0, size, step)]


def accumulate_micro_batches(engine: Any, experience: Any, micro_batch_size: int | None,
                             loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
                             unit: Literal["token", "sequence"] = "token") -> dict[str, float]:
    r"""One optimizer step over a mini-batch, computed `micro_batch_size` sequences at a time.

    Each micro-batch's loss, a mean over its units (response tokens, or sequences with a response for a
    sequence-mean loss such as GSPO's), is weighted by its share of the units of the mini-batch *over every rank
    of the group* (times the group's size, since the ranks' gradients are averaged), so the update is the
    gradient of the whole mini-batch's mean, the same for 1 rank or N:

    .. math:: \nabla \frac{1}{T} \sum_{r} \sum_{t \in r} \ell_t
              = \frac{1}{N} \sum_r \nabla \Big( \frac{N}{T} \sum_{t \in r} \ell_t \Big)

    with T the units of all N ranks' parts. The returned metrics are this rank's means, plus `grad_norm`."""
    def units(part: Any) -> torch.Tensor:
        mask = part.rollout.response_mask
        return mask.sum() if unit == "token" else (mask.sum(-1) > 0).sum().to(mask.dtype)

    local = units(experience)
    total, ranks = group_token_count(local)
    local = float(local.clamp(min=1))
    size = micro_batch_size or len(experience)
    metrics: dict[str, float] = {}
    for start in range(0, len(experience), size):
        part = experience.select(list(range(start, min(start + size, len(experience)))))
        weight = float(units(part))
        loss, part_metrics = loss_fn(part)
        engine.accumulate(loss * (weight * ranks / total))
        for key, value in part_metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value * weight / local
    metrics["grad_norm"] = engine.step()
    return metrics


def group_token_count(local: torch.Tensor) -> tuple[float, int]:
    """The tokens of a mini-batch summed over the ranks of this worker's process group (at least 1), and the
    group's size; (local, 1) outside a group. Every rank must call it, once per mini-batch."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(local.clamp(min=1)), 1
    total = local.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return float(total.clamp(min=1)), dist.get_world_size()


def mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over mini-batch updates."""
    keys = history[0].keys() if history else []
    return {key: sum(h[key] for h in history) / len(history) for key in keys}


def node_address() -> str:
    """This node's address as Ray knows it (127.0.0.1 for a local run, whose Ray is on loopback)."""
    import ray

    return ray.util.get_node_ip_address()


class TrainedRole:
    """What the policy and critic workers share: joining the group's process group and building the engine, and
    the torch threads of each phase (`workers.placement.phase_threads`)."""

    model: torch.nn.Module
    engine: object
    rank: int = 0
    world_size: int = 1
    threads: dict[str, int] | None = None

    def use_threads(self, phase: str) -> None:
        """Run what follows with the threads `phase` (`score`, `update`) gives this role."""
        count = (self.threads or {}).get(phase)
        if count is not None and count != torch.get_num_threads():
            torch.set_num_threads(count)

    def master_address(self) -> tuple[str, int]:
        """Rank 0: listen for the group's rendezvous on this node's address only; returns it and the port."""
        from kuberlhf.engines.weight_transfer import open_listener

        address = node_address()
        self.rendezvous_listener, port = open_listener(address)
        return address, port

    def setup_training(self, setup: object, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        """Join the group (DeepSpeed) or stay single-process (plain torch), then build the training engine."""
        from kuberlhf.engines.training import make_training_engine

        self.rank, self.world_size, self.setup = rank, world_size, setup
        if setup.uses_deepspeed(world_size):
            from kuberlhf.engines.deepspeed_engine import init_distributed

            init_distributed(rank, world_size, master_addr, master_port, node_address(),
                             getattr(self, "rendezvous_listener", None) if rank == 0 else None)
        self.engine = make_training_engine(self.model, setup, world_size)

    def memory_report(self) -> dict[str, float]:
        """What this rank holds between steps, in MiB: its parameters (its ZeRO-3 partition), optimizer state
        (its ZeRO-1/2/3 partition) and the process's resident memory. (Gradients are freed after each step.)"""
        import psutil

        def mib(tensors: list[torch.Tensor]) -> float:
            return sum(t.numel() * t.element_size() for t in tensors) / 2**20

        params = [getattr(p, "ds_tensor", p) for p in self.model.parameters()]  # ZeRO-3 keeps a shard
        optimizer = getattr(self.engine, "optimizer", None)
        inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed wraps the client optimizer
        states = [v for state in inner.state.values() for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
        return {"params_mib": mib(params), "optimizer_mib": mib(states),
                "rss_mib": psutil.Process().memory_info().rss / 2**20}

    def save_state(self, target: StorageTarget, key: str) -> dict[str, int]:
        """Write this rank's part of a checkpoint (weights, optimizer state: its ZeRO partition) into the job's
        storage under `key`, from wherever this worker runs; returns the manifest of the files it wrote."""
        with tempfile.TemporaryDirectory(prefix="kuberlhf-checkpoint-") as scratch:
            self.engine.save(scratch, updates=self.updates)
            return deliver(Path(scratch), target, key)

    def load_state(self, target: StorageTarget, key: str, files: dict[str, int]) -> None:
        """Restore a checkpoint's part (every rank reads all of its files), then apply the spec's learning
        rate (a resume may have accepted a new one)."""
        with tempfile.TemporaryDirectory(prefix="kuberlhf-checkpoint-") as scratch:
            fetch(target, key, files, Path(scratch))
            self.updates = self.engine.load(scratch)["updates"]
        self.engine.set_learning_rate(self.setup.learning_rate)

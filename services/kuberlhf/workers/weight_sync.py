"""Weight sync: after each update the rollout engines get the policy's new weights, through one seam.

`WeightSync.start(version)` queues the transfer behind the update (returns at once; the next generation is
queued behind it), and `finish` waits for it and checks it:
- every engine now holds weight `version` (the number of policy updates behind them), and each rollout batch
  carries the version it was sampled with, so the driver can tell a stale batch from a fresh one;
- each engine scores a small fixed probe batch with its new weights, and its log-probs are compared with the
  trainer's on the same tokens: a mean absolute difference above `rollout.weightSync.probeTolerance` is a sync
  that did not deliver (`WeightSyncError`, which replaces the workers from the newest checkpoint).

Transports (`rollout.weightSync.transport`):
- `objectStore`: rank 0 gathers a full CPU state dict and the engines take it through Ray's object store.
- `broadcast`: a process group of the policy's rank 0 and every engine (gloo on CPU, NCCL on GPU), the
  weights sent in buckets (`rollout.weightSync.bucketMB`); ZeRO-3 gathers one bucket at a time; LoRA adapters are
  folded in first. vLLM receives through its own weight-transfer API (engines/vllm_weight_transfer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kuberlhf.engines.weight_transfer import plan_buckets
from kuberlhf.errors import WeightSyncError, describe_error
from kuberlhf.workers.group import Pending, WorkerGroup


def probe_difference(trainer: list[torch.Tensor], engine: list[torch.Tensor]) -> float:
    r"""Mean absolute difference of the probe's token log-probs under the trainer and an engine,

    .. math:: d = \frac{1}{N} \sum_{i,t} \left| \log \pi_\text{train}(x_{i,t}) - \log \pi_\text{engine}(x_{i,t}) \right|

    over the N probe tokens (each row's tokens after its first)."""
    total = sum(float((a.float() - b.float()).abs().sum()) for a, b in zip(trainer, engine, strict=True))
    count = sum(a.numel() for a in trainer)
    return total / max(count, 1)


@dataclass
class SyncInFlight:
    """One sync, queued: the transfer (every engine's seconds) and both sides' probe log-probs."""

    version: int
    transfer: Pending
    trainer_probe: Pending
    engine_probes: Pending


class WeightSync:
    """The seam: `start(version)` then `finish(sync)`; transports implement `transfer` (and `connect`)."""

    transport = ""

    def __init__(self, policy: WorkerGroup, rollout: WorkerGroup, probe_rows: list[list[int]], tolerance: float
                 ) -> None:
        self.policy, self.rollout = policy, rollout
        self.probe_rows, self.tolerance = probe_rows, tolerance

    def connect(self) -> None:
        """Set up the transport once, before the first sync (every engine at once)."""

    def start(self, version: int) -> SyncInFlight:
        transfer = self.transfer(version)
        return SyncInFlight(version, transfer, self.policy.call("probe_logprobs", self.probe_rows),
                            self.rollout.call_each("probe_logprobs", self.probe_rows))

    def finish(self, sync: SyncInFlight) -> dict[str, float]:
        """Wait for the sync and verify it; returns its metrics or raises `WeightSyncError` (a transfer that
        failed, or a collective that timed out inside a worker, too)."""
        import ray

        try:
            seconds = sync.transfer.get()
        except ray.exceptions.RayTaskError as err:
            raise WeightSyncError(f"weight sync to version {sync.version} ({self.transport}) failed: "
                                  f"{describe_error(err)}") from err
        trainer, engines = sync.trainer_probe.get(), sync.engine_probes.get()
        differences = [probe_difference(trainer, engine) for engine in engines]
        worst = max(differences)
        if not worst <= self.tolerance:  # NaN fails too
            rank = differences.index(worst)
            raise WeightSyncError(
                f"weight sync to version {sync.version} ({self.transport}): rollout rank {rank} scores the probe "
                f"{worst:.4g} nats per token away from the trainer (spec.rollout.weightSync.probeTolerance "
                f"{self.tolerance:g}): its engine does not hold the policy's weights")
        return {"time/weight_sync": seconds, "sync/probe_logprob_diff": worst}

    def sync_now(self, version: int) -> dict[str, float]:
        """A sync waited for at once (at start-up and after a resume)."""
        return self.finish(self.start(version))

    def transfer(self, version: int) -> Pending:
        """Queue the transfer of the policy's current weights as `version`, without the probe; `get()` gives its
        seconds (until the last engine holds the weights)."""
        raise NotImplementedError


class ObjectStoreSync(WeightSync):
    transport = "objectStore"

    def transfer(self, version: int) -> Pending:
        weights = self.policy.call("state_dict").refs[0]  # every rank gathers; rank 0 returns them
        loaded = self.rollout.call_each("load_weights", weights, version)  # runs once the weights are in
        return Pending(loaded.refs, max, loaded.calls, loaded.timeout_s)


class BroadcastSync(WeightSync):
    transport = "broadcast"

    def __init__(self, policy: WorkerGroup, rollout: WorkerGroup, probe_rows: list[list[int]], tolerance: float,
                 bucket_bytes: int, timeout_s: float) -> None:
        super().__init__(policy, rollout, probe_rows, tolerance)
        self.bucket_bytes, self.timeout_s = bucket_bytes, timeout_s

    def connect(self) -> None:
        import ray

        self.meta = self.policy.call("weight_metadata").get()
        self.plan = plan_buckets(self.meta, self.bucket_bytes)
        address, port = ray.get(self.policy.actors[0].open_weight_store.remote())
        world = 1 + len(self.rollout)
        joined = [self.policy.call("join_weight_group", address, port, world, self.timeout_s)]
        joined += [Pending([actor.join_weight_group.remote(address, port, 1 + rank, world, self.timeout_s, self.meta,
                                                           self.plan)], list, [f"rollout rank {rank} join_weight_group"],
                           self.timeout_s) for rank, actor in enumerate(self.rollout.actors)]
        for pending in joined:
            pending.get()

    def transfer(self, version: int) -> Pending:
        """The sender's calls and the receivers' in one wait (a failed sender is raised at once). Each side
        times itself from its start, which includes waiting for the other (the engines queue their receive right
        after sampling, while the policy still trains; one step off policy the sender may wait for sampling), so
        the transfer took the shorter of the two."""
        sent = self.policy.call("send_weights", self.meta, self.plan)
        received = self.rollout.call_each("receive_weights", version)
        senders = len(sent.refs)
        return Pending(sent.refs + received.refs,
                       lambda results: min(max(results[:senders]), max(results[senders:])),
                       (sent.calls or []) + (received.calls or []), self.timeout_s)


def make_weight_sync(transport: str, policy: WorkerGroup, rollout: WorkerGroup, probe_rows: list[list[int]],
                     settings: Any, timeout_s: float) -> WeightSync:
    """The transport the plan chose (`resolve_transport`), connected."""
    if transport == "broadcast":
        sync: WeightSync = BroadcastSync(policy, rollout, probe_rows, settings.probe_tolerance,
                                         settings.bucket_mb << 20, timeout_s)
    else:
        sync = ObjectStoreSync(policy, rollout, probe_rows, settings.probe_tolerance)
    sync.connect()
    return sync


def resolve_transport(requested: str, tensor_parallel_size: int) -> str:
    """`auto`: broadcast, except for vLLM engines sharded over several GPUs (their workers run in processes of
    their own, where the broadcast receiver is not registered): the object store there."""
    if requested != "auto":
        return requested
    return "objectStore" if tensor_parallel_size > 1 else "broadcast"

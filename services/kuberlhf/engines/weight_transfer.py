"""Weight transfer by broadcast: the policy's rank 0 sends its weights to every rollout engine over a
torch.distributed process group of their own (gloo on CPU, NCCL on GPU), bucket by bucket.

The group is *stateless* (its own TCPStore, not torch's default group): the policy ranks already share a
default group for DeepSpeed, and an in-process vLLM engine keeps one of its own. Rank 0 is the policy's rank 0
(the sender); rollout engine i is rank 1 + i. Every collective waits at most `timeout_s`.

Both sides agree on what is sent before the first sync: the tensors' names, dtypes and shapes
(`TensorMeta`, from the sender) and their grouping into buckets (`plan_buckets`, a pure function of that list).
A bucket is one flat buffer of one dtype, so a sync is a handful of broadcasts, not one per tensor.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 256 << 20


@dataclass(frozen=True)
class TensorMeta:
    """One tensor of the sync: its name in the Hugging Face checkpoint, dtype (torch's name) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def tensor_metadata(weights: Mapping[str, torch.Tensor]) -> list[TensorMeta]:
    return [TensorMeta(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in weights.items()]


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """State-dict names that are another name's parameter (tied weights: `lm_head.weight` is
    `model.embed_tokens.weight` in SmolLM2 and most small models). A sync sends each parameter once; the
    receivers tie them too (vLLM skips a tied `lm_head` when loading; a tied HF model shares the tensor)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


def plan_buckets(meta: list[TensorMeta], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[int]]:
    """Consecutive tensors grouped into buckets of one dtype and at most `bucket_bytes` each (a tensor larger
    than that is a bucket of its own). Returns indices into `meta`, in order."""
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for index, item in enumerate(meta):
        if not buckets or item.dtype != dtype or size + item.nbytes > bucket_bytes:
            buckets.append([])
            size, dtype = 0, item.dtype
        buckets[-1].append(index)
        size += item.nbytes
    return buckets


def open_listener(address: str) -> tuple[int, int]:
    """A socket listening on `address` only (a free port) for rank 0's store: torch's TCPStore would listen on
    every interface. Returns its file descriptor (handed to the store, which owns it then) and its port."""
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen()
    port = listener.getsockname()[1]
    return listener.detach(), port


class BroadcastGroup:
    """A process group of the sender (rank 0) and the rollout engines, outside torch's default group.

    `address:port` is rank 0's store; rank 0 passes the socket `open_listener` made for it (`listen_fd`). Each
    rank's gloo connections listen on its own `bind_address` (its node's address), never on every interface."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, device: torch.device,
                 timeout_s: float, bind_address: str, listen_fd: int | None = None) -> None:
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout,
                              master_listen_fd=listen_fd, use_libuv=True)
        self.store = dist.PrefixStore("kuberlhf-weights", store)
        self.rank, self.world_size, self.device = rank, world_size, device
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = dist.ProcessGroupNCCL(self.store, rank, world_size, options)
        else:
            options = dist.ProcessGroupGloo._Options()
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=bind_address)]
            options._timeout = timeout
            self.group = dist.ProcessGroupGloo(self.store, rank, world_size, options)

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's `tensor` into everyone's (in place); raises when a peer does not take part in time."""
        self.group.broadcast(tensor, 0).wait()

    def close(self) -> None:
        self.group = None
        self.store = None


def send_buckets(group: BroadcastGroup, buckets: Iterable[list[torch.Tensor]]) -> int:
    """Broadcast each bucket's tensors as one flat buffer (rank 0); returns the bytes sent."""
    sent = 0
    for tensors in buckets:
        flat = torch.cat([t.detach().reshape(-1).to(group.device) for t in tensors])
        group.broadcast(flat)
        sent += flat.numel() * flat.element_size()
    return sent


def receive_buckets(group: BroadcastGroup, meta: list[TensorMeta], plan: list[list[int]]
                    ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Each bucket as (name, tensor) pairs, as it arrives (rank > 0). The tensors are views of the bucket's
    buffer: load them before asking for the next bucket."""
    for bucket in plan:
        items = [meta[i] for i in bucket]
        flat = torch.empty(sum(m.numel for m in items), dtype=getattr(torch, items[0].dtype), device=group.device)
        group.broadcast(flat)
        yield unpack(flat, items)


def unpack(flat: torch.Tensor, items: list[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
    out, offset = [], 0
    for item in items:
        out.append((item.name, flat[offset:offset + item.numel].view(item.shape)))
        offset += item.numel
    return out

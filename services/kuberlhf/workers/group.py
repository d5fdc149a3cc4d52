"""Worker groups: the N Ray actors of one role, called as one.

`call` runs a method on every rank with the same arguments; `map_batch` splits a batch across ranks
(contiguous parts) and `Pending.get` concatenates the parts in rank order. Both return at once, so the
driver can start several roles' work before waiting on any of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import torch

from kuberlhf.data.batch import split_indices


@dataclass
class Pending:
    """Results of one group call, still running; `get()` waits and combines them."""

    refs: list[ray.ObjectRef]
    combine: Callable[[list[Any]], Any]

    def get(self) -> Any:
        return self.combine(ray.get(self.refs))


def gather_timed(pending: dict[str, Pending | None]) -> tuple[dict[str, Any], dict[str, float]]:
    """Wait for several groups' results at once; returns them by name, and when each was complete
    (seconds since this call, as `time/<name>`). `None` entries stay `None`."""
    started = time.perf_counter()
    waiting = {name: list(p.refs) for name, p in pending.items() if p is not None}
    seconds: dict[str, float] = {}
    while waiting:
        refs = [ref for group in waiting.values() for ref in group]
        ready, _ = ray.wait(refs, num_returns=1)
        for name in list(waiting):
            waiting[name] = [ref for ref in waiting[name] if ref not in ready]
            if not waiting[name]:
                seconds[f"time/{name}"] = time.perf_counter() - started
                del waiting[name]
    results = {name: p.get() if p is not None else None for name, p in pending.items()}
    return results, seconds


class WorkerGroup:
    def __init__(self, role: str, actors: list[ray.actor.ActorHandle]) -> None:
        self.role = role
        self.actors = actors

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Pending:
        """Every rank runs `method(*args)`; `get()` returns rank 0's result."""
        refs = [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]
        return Pending(refs, lambda results: results[0])

    def map_batch(self, method: str, batch: Any, *args: Any, columns: dict[str, list] | None = None) -> Pending:
        """Split `batch` (a list or a batch with `select`, and per-row `columns`) across ranks; `get()`
        concatenates what they return (tensors, or objects with a `concat` static method)."""
        if len(self.actors) == 1:  # nothing to split
            extra = (columns,) if columns is not None else ()
            return Pending([getattr(self.actors[0], method).remote(batch, *extra, *args)], lambda results: results[0])
        parts = split_indices(len(batch), len(self.actors))
        refs = []
        for actor, indices in zip(self.actors, parts):
            extra = ({name: [values[i] for i in indices] for name, values in columns.items()},) if columns is not None else ()
            part = [batch[i] for i in indices] if isinstance(batch, list) else batch.select(indices)
            refs.append(getattr(actor, method).remote(part, *extra, *args))
        return Pending(refs, lambda results: results[0] if len(results) == 1 else _concat(results))

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def _concat(results: list[Any]) -> Any:
    if isinstance(results[0], dict):  # per-rank metrics: their mean
        return {key: sum(r[key] for r in results) / len(results) for key in results[0]}
    if isinstance(results[0], torch.Tensor):
        if results[0].dim() == 1:
            return torch.cat(results)
        width = max(r.shape[1] for r in results)
        return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in results])
    return type(results[0]).concat(results)

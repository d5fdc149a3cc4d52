"""Worker groups: the N Ray actors of one role, called as one.

`call` runs a method on every rank with the same arguments; `map_batch` splits a batch across ranks
(contiguous parts) and `Pending.get` concatenates the parts in rank order. Both return at once, so the
driver can start several roles' work before waiting on any of it. Every wait is bounded by the group's
`timeout_s` (`training.callTimeoutSeconds`): a rank that does not answer raises `WorkerTimedOut` naming the
role, the rank and the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import torch

from kuberlhf.data.batch import split_indices
from kuberlhf.errors import WorkerTimedOut


@dataclass
class Pending:
    """Results of one group call, still running; `get()` waits (at most `timeout_s`) and combines them.
    `calls` names each ref's rank and method, for the error when one does not answer."""

    refs: list[ray.ObjectRef]
    combine: Callable[[list[Any]], Any]
    calls: list[str] | None = None
    timeout_s: float | None = None

    def get(self) -> Any:
        wait_all(self.refs, self.calls, self.timeout_s)
        return self.combine(ray.get(self.refs))


def wait_all(refs: list[ray.ObjectRef], calls: list[str] | None, timeout_s: float | None) -> None:
    """Wait until every ref is ready, raising a rank's failure as soon as it is in (not after the other ranks,
    which may be waiting for it in a collective) and `WorkerTimedOut` for the calls still running after
    `timeout_s`."""
    deadline = None if timeout_s is None else time.perf_counter() + timeout_s
    waiting = list(refs)
    while waiting:
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=left, fetch_local=False)
        if not ready:
            raise timed_out(_names(refs, calls, waiting), timeout_s)
        ray.get(ready)


def timed_out(calls: list[str], timeout_s: float) -> WorkerTimedOut:
    return WorkerTimedOut(f"{', '.join(calls)}: no answer within {timeout_s:g} s (spec.training.callTimeoutSeconds);"
                          " the worker hangs or its node is gone")


def _names(refs: list[ray.ObjectRef], calls: list[str] | None, late: list[ray.ObjectRef]) -> list[str]:
    return [calls[refs.index(ref)] if calls else "a worker call" for ref in late]


def gather_timed(pending: dict[str, Pending | None]) -> tuple[dict[str, Any], dict[str, float]]:
    """Wait for several groups' results at once; returns them by name, and when each was complete
    (seconds since this call, as `time/<name>`). `None` entries stay `None`. Bounded by the longest of
    their timeouts."""
    started = time.perf_counter()
    waiting = {name: list(p.refs) for name, p in pending.items() if p is not None}
    limits = [p.timeout_s for p in pending.values() if p is not None and p.timeout_s is not None]
    deadline = started + max(limits) if limits else None
    seconds: dict[str, float] = {}
    while waiting:
        refs = [ref for group in waiting.values() for ref in group]
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
        ready, _ = ray.wait(refs, num_returns=1, timeout=left, fetch_local=False)
        if not ready:
            raise timed_out([call for name, late in waiting.items()
                             for call in _names(pending[name].refs, pending[name].calls, late)], max(limits))
        for name in list(waiting):
            waiting[name] = [ref for ref in waiting[name] if ref not in ready]
            if not waiting[name]:
                seconds[f"time/{name}"] = time.perf_counter() - started
                del waiting[name]
    results = {name: p.get() if p is not None else None for name, p in pending.items()}
    return results, seconds


class WorkerGroup:
    def __init__(self, role: str, actors: list[ray.actor.ActorHandle], timeout_s: float | None = None) -> None:
        self.role = role
        self.actors = actors
        self.timeout_s = timeout_s

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Pending:
        """Every rank runs `method(*args)`; `get()` returns rank 0's result."""
        return self._pending(method, [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors],
                             lambda results: results[0])

    def call_each(self, method: str, *args: Any) -> Pending:
        """Every rank runs `method(*args)`; `get()` returns every rank's result, in rank order."""
        return self._pending(method, [getattr(actor, method).remote(*args) for actor in self.actors], list)

    def _pending(self, method: str, refs: list[ray.ObjectRef], combine: Callable[[list[Any]], Any]) -> Pending:
        return Pending(refs, combine, [f"{self.role} rank {rank} {method}" for rank in range(len(refs))],
                       self.timeout_s)

    def map_batch(self, method: str, batch: Any, *args: Any, columns: dict[str, list] | None = None) -> Pending:
        """Split `batch` (a list or a batch with `select`, and per-row `columns`) across ranks; `get()`
        concatenates what they return (tensors, or objects with a `concat` static method)."""
        if len(self.actors) == 1:  # nothing to split
            extra = (columns,) if columns is not None else ()
            return self._pending(method, [getattr(self.actors[0], method).remote(batch, *extra, *args)],
                                 lambda results: results[0])
        parts = split_indices(len(batch), len(self.actors))
        refs = []
        for actor, indices in zip(self.actors, parts):
            extra = ({name: [values[i] for i in indices] for name, values in columns.items()},) if columns is not None else ()
            part = [batch[i] for i in indices] if isinstance(batch, list) else batch.select(indices)
            refs.append(getattr(actor, method).remote(part, *extra, *args))
        return self._pending(method, refs, lambda results: results[0] if len(results) == 1 else _concat(results))

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

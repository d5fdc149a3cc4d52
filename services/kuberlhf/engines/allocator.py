"""The memory allocator of CPU workers: jemalloc (the copy Ray ships for its own servers), keeping freed memory.

A training step on the CPU allocates and frees the same large tensors every step (activations, gradients, the
weight-sync buckets). glibc returns each large block to the kernel when it is freed (`munmap`), so the next step
faults every page in again and the kernel zeroes it: on a 2-core VM that is a third of a policy update spent in
the kernel (measured: a fresh 256 MiB buffer costs 0.13-0.18 s to fill, a reused one 0.03 s). jemalloc with
purging off (`dirty_decay_ms:-1`) keeps freed blocks for the next allocation, as PyTorch's and vLLM's CPU
performance guides advise (they name jemalloc or tcmalloc through `LD_PRELOAD`). A process's memory then stays at
its peak, which a worker reaches every step anyway.

Only for actors without GPUs (a GPU worker's large tensors live in CUDA's caching allocator), and never over a
`LD_PRELOAD` the user set; a `MALLOC_CONF` the user set replaces ours. `LD_PRELOAD` must be in the environment a process starts with: Ray applies an actor's
`runtime_env` `env_vars` before it starts the worker process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

RETAINING_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_path() -> str | None:
    """Ray's jemalloc (`ray/core/libjemalloc.so`), where this Ray installation has one."""
    import ray

    path = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return str(path) if path.is_file() else None


def cpu_worker_env(gpus: float) -> dict[str, str]:
    """Environment variables that give a worker the retaining allocator (empty: leave it as it is). A
    `MALLOC_CONF` the user exported is jemalloc's configuration instead of ours (`dirty_decay_ms:0` hands freed
    memory back at once)."""
    if gpus > 0 or os.environ.get("LD_PRELOAD"):
        return {}
    path = jemalloc_path()
    return {"LD_PRELOAD": path, "MALLOC_CONF": os.environ.get("MALLOC_CONF") or RETAINING_CONF} if path else {}


def allocator_runtime_env(gpus: float) -> dict[str, Any]:
    """A Ray `runtime_env` that gives a worker of `gpus` GPUs the allocator ({}: nothing to change); Ray merges
    its env_vars into the job's."""
    env = cpu_worker_env(gpus)
    return {"env_vars": env} if env else {}


def allocator_options(gpus: float) -> dict[str, Any]:
    """The same as actor options (`.options(**...)`); empty when nothing changes."""
    runtime_env = allocator_runtime_env(gpus)
    return {"runtime_env": runtime_env} if runtime_env else {}

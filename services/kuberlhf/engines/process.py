"""Process and device set-up of any process that computes: the role actors, Ray Train's offline workers and the
reward service's replicas."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from kuberlhf.quiet import quiet_libraries
from kuberlhf.telemetry.console import configure_worker_logging

F = TypeVar("F", bound=Callable[..., Any])


def configure_process(cpus: float, seed: int) -> int:
    """Pin torch to the worker's CPU share (several actors share a machine), seed it, and keep library
    chatter (load reports, progress bars) out of the job log; returns the thread count."""
    quiet_libraries()
    configure_worker_logging()
    threads = max(1, math.floor(cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return threads


def worker_device() -> torch.device:
    """Where this worker computes: its GPU when it has one, else the CPU.

    Ray sets CUDA_VISIBLE_DEVICES of an actor to the GPUs it was given, so its GPU is always `cuda:0`
    there; an actor without GPUs (resources.<role>.gpus: 0) on a GPU node stays on the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    ray = sys.modules.get("ray")  # imported in every Ray worker; absent when a role runs outside Ray
    if ray is not None and ray.is_initialized() and not ray.get_gpu_ids():
        return torch.device("cpu")
    return torch.device("cuda", 0)


def frozen_dtype(device: torch.device, bf16: bool) -> torch.dtype:
    """Precision of a role that only runs forward passes (reference, reward, HF rollouts): bfloat16 on a GPU
    when the job trains in bfloat16 (`training.bf16`), so it matches the trainer; float32 otherwise."""
    return torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32


def returns_cached_gpu_memory(method: F) -> F:
    """Decorate a GPU phase of a role that shares its GPU with a vLLM engine (scoring, an update): afterwards the
    memory its temporary tensors took goes back to the GPU (`torch.cuda.empty_cache`), not to torch's cache,
    so the engine wakes into it for the next generation. Nothing changes on the CPU."""

    @functools.wraps(method)
    def returning(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()

    return returning  # type: ignore[return-value]

"""Process set-up shared by every worker actor."""

from __future__ import annotations

import math
import os

import torch

from kuberlhf.quiet import quiet_libraries


def configure_process(cpus: float, seed: int) -> int:
    """Pin torch to the worker's CPU share (several actors share a machine), seed it, and keep library
    chatter (load reports, progress bars) out of the job log; returns the thread count."""
    quiet_libraries()
    threads = max(1, math.floor(cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return threads


def minibatches(size: int, mini_batch_size: int | None, generator: torch.Generator) -> list[list[int]]:
    """A shuffled split of range(size) into mini-batches (one batch when mini_batch_size is None)."""
    order = torch.randperm(size, generator=generator).tolist()
    step = mini_batch_size or size
    return [order[start : start + step] for start in range(0, size, step)]


def mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over mini-batch updates."""
    keys = history[0].keys() if history else []
    return {key: sum(h[key] for h in history) / len(history) for key in keys}

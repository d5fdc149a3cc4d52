"""The reference role: a frozen copy of the initial policy; computes the log-probs the KL term compares against."""

from __future__ import annotations

import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.models.forward import response_logprobs
from kuberlhf.models.loading import load_causal_lm
from kuberlhf.engines.process import configure_process, frozen_dtype, returns_cached_gpu_memory, worker_device
from kuberlhf.workers.metrics import exports_metrics


class ReferenceWorker:
    def __init__(self, model_path: str, cpus: float, seed: int, bf16: bool = False) -> None:
        configure_process(cpus, seed)
        self.device = worker_device()
        dtype = frozen_dtype(self.device, bf16)
        self.model = load_causal_lm(model_path, "spec.reference.model", dtype).to(self.device).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    @exports_metrics
    @returns_cached_gpu_memory
    def compute_logprobs(self, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        batch = batch.to(self.device)
        logprobs, _ = response_logprobs(self.model, batch, temperature)
        return (logprobs * batch.response_mask).cpu()

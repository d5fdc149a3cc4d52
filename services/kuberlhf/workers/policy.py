"""The policy role: holds the trained causal LM and its optimizer; computes log-probs and applies policy-gradient
updates. The loss is the algorithm's (`algorithms.POLICY_LOSSES`: PPO's clip, GSPO, CISPO), plus
`algorithms.kl_loss` when the KL is a loss term."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from kuberlhf.algorithms import POLICY_LOSSES, kl_loss, kl_penalty, masked_mean, truncated_importance_weights
from kuberlhf.data.batch import Experience, RolloutBatch
from kuberlhf.engines.weight_transfer import (
    BroadcastGroup,
    TensorMeta,
    open_listener,
    send_buckets,
    tensor_metadata,
    tied_aliases,
)
from kuberlhf.plan import PolicyUpdateConfig
from kuberlhf.models.forward import prompt_token_logprobs, response_logprobs
from kuberlhf.models.loading import load_policy, load_tokenizer
from kuberlhf.models.lora import is_lora, merged_state_dict, save_trained
from kuberlhf.storage.transfer import StorageTarget, deliver
from kuberlhf.engines.process import configure_process, returns_cached_gpu_memory, worker_device
from kuberlhf.workers.common import TrainedRole, accumulate_micro_batches, mean_metrics, minibatches, node_address
from kuberlhf.workers.metrics import exports_metrics


class PolicyWorker(TrainedRole):
    def __init__(self, model_path: str, cpus: float, seed: int, lora: object | None = None,
                 threads: dict[str, int] | None = None) -> None:
        configure_process(cpus, seed)
        self.threads = threads
        self.seed = seed
        self.tokenizer = load_tokenizer(model_path)
        self.device = worker_device()
        self.model = load_policy(model_path, lora, self.device)
        self.updates = 0  # the engine comes with setup_training, once the group's process group is up

    @torch.no_grad()
    @exports_metrics
    @returns_cached_gpu_memory
    def compute_logprobs(self, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        self.use_threads("score")
        self.model.eval()
        batch = batch.to(self.device)
        logprobs, _ = response_logprobs(self.model, batch, temperature)
        return (logprobs * batch.response_mask).cpu()

    @exports_metrics
    @returns_cached_gpu_memory
    def update(self, experience: Experience, config: PolicyUpdateConfig) -> dict[str, float]:
        """`config.epochs` passes of clipped policy-gradient updates over the experience."""
        self.use_threads("update")
        self.model.train()
        started = time.perf_counter()
        experience = experience.to(self.device)
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.rank + self.updates)
        learning_rate = self.engine.learning_rate  # this update's first (the schedule moves with each step)
        history = []
        for _ in range(config.epochs):
            for indices in minibatches(len(experience), config.mini_batch_size, generator):
                history.append(self._minibatch_step(experience.select(indices), config))
        self.updates += 1
        metrics = mean_metrics(history)
        metrics["policy/lr"] = learning_rate
        metrics["time/policy_update"] = time.perf_counter() - started
        return metrics

    def _minibatch_step(self, experience: Experience, config: PolicyUpdateConfig) -> dict[str, float]:
        metrics = accumulate_micro_batches(self.engine, experience, config.micro_batch_size,
                                           lambda part: self._loss(part, config), POLICY_LOSSES[config.loss].unit)
        metrics["policy/grad_norm"] = metrics.pop("grad_norm")
        return metrics

    def _loss(self, experience: Experience, config: PolicyUpdateConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """Token-mean policy loss of one micro-batch, and its metrics."""
        batch, mask = experience.rollout, experience.rollout.response_mask
        logprobs, entropy = response_logprobs(self.engine.forward_module, batch, config.temperature, with_entropy=True)
        old_logprobs = experience.old_logprobs if experience.old_logprobs is not None else logprobs.detach()
        weights = None
        if config.is_cap is not None:
            weights = truncated_importance_weights(old_logprobs, batch.rollout_logprobs, mask, config.is_cap)
        loss, stats = POLICY_LOSSES[config.loss].function(
            logprobs, old_logprobs, experience.advantages, mask,
            clip_low=config.clip_low, clip_high=config.clip_high, dual_clip=config.dual_clip, token_weights=weights,
        )
        # Train-inference mismatch: KL(rollout engine || trainer) on the sampled tokens (k3, samples of the engine).
        mismatch = masked_mean(kl_penalty(batch.rollout_logprobs, old_logprobs, "k3"), mask)
        metrics = {"policy/pg_loss": float(loss.detach()), "rollout/mismatch_kl": float(mismatch),
                   "policy/entropy": float(masked_mean(entropy, mask)),
                   **{f"policy/{name}": float(value) for name, value in stats.items()}}
        if weights is not None:
            metrics["rollout/is_weight_mean"] = float(masked_mean(weights, mask))
        if config.kl_loss_coef > 0 and experience.ref_logprobs is not None:
            kl = kl_loss(logprobs, experience.ref_logprobs, mask, config.kl_estimator)
            loss = loss + config.kl_loss_coef * kl
            metrics["policy/kl_loss"] = float(kl.detach())
        metrics["policy/loss"] = float(loss.detach())
        return loss, metrics

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Current weights on the CPU, for the rollout engines (rank 0; other ranks take part in the ZeRO-3
        gather and return nothing)."""
        weights = self.engine.full_state_dict()
        if self.rank != 0:
            return {}
        if is_lora(self.model):  # the engines hold the plain model: fold the adapters in
            weights = merged_state_dict(self.model, weights)
        return {name: tensor.cpu() for name, tensor in weights.items()}

    def probe_logprobs(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """The weight-sync probe, scored by the trainer (every rank runs it: ZeRO-3 gathers in the forward)."""
        self.model.eval()
        return prompt_token_logprobs(self.model, rows)

    def weight_metadata(self) -> list[TensorMeta]:
        """What a sync sends (the rollout engines' names: LoRA adapters folded in; a tied weight once), the same
        on every rank."""
        if is_lora(self.model):
            meta = tensor_metadata(merged_state_dict(self.model, self.engine.full_state_dict()))
            aliases = tied_aliases(self.model.get_base_model())
        else:
            meta, aliases = self.engine.weight_metadata(), tied_aliases(self.model)
        return [item for item in meta if item.name not in aliases]

    def open_weight_store(self) -> tuple[str, int]:
        """Rank 0: listen for the broadcast transport's group on this node's address only; returns it and the
        port."""
        address = node_address()
        self.weight_listener, port = open_listener(address)
        return address, port

    def join_weight_group(self, address: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0 joins the broadcast transport's group as its sender; the other ranks only help gather."""
        if self.rank == 0:
            self.weight_group = BroadcastGroup(address, port, 0, world_size, self.device, timeout_s, address,
                                               listen_fd=self.weight_listener)

    @returns_cached_gpu_memory  # the buckets
    def send_weights(self, meta: list[TensorMeta], plan: list[list[int]]) -> float:
        """Broadcast the current weights bucket by bucket (rank 0; under ZeRO-3 every rank gathers each bucket
        in turn); returns the seconds it took."""
        started = time.perf_counter()
        names = [[meta[i].name for i in bucket] for bucket in plan]
        if is_lora(self.model):
            merged = merged_state_dict(self.model, self.engine.full_state_dict())
            buckets = ([merged[name] for name in bucket] for bucket in names)
        else:
            buckets = self.engine.weight_buckets(names)
        if self.rank == 0:
            send_buckets(self.weight_group, buckets)
        else:
            for _ in buckets:  # take part in each bucket's gather
                pass
        return time.perf_counter() - started

    def save_pretrained(self, target: StorageTarget, key: str, merge_lora: bool = True) -> dict[str, int]:
        """Rank 0 writes a Hugging Face model directory (safetensors + tokenizer) into the job's storage under
        `key` and returns its manifest; every rank takes part in the gather."""
        weights = self.engine.full_state_dict()
        if self.rank != 0:
            return {}
        with tempfile.TemporaryDirectory(prefix="kuberlhf-final-") as scratch:
            save_trained(self.model, weights, Path(scratch), merge_lora)
            self.tokenizer.save_pretrained(scratch)
            return deliver(Path(scratch), target, key)



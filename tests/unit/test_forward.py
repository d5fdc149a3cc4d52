"""Forward passes over rollout batches: the logits that predict response tokens."""

from __future__ import annotations

import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.models.forward import response_logits, sequence_inputs
from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama


def test_response_logits_are_the_full_forward_pass_at_the_positions_before_each_response_token():
    model = build_tiny_llama(build_char_tokenizer("0123456789+="), max_position_embeddings=32).eval()
    generator = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(4, 16, (3, 5), generator=generator)
    prompt_mask = torch.ones(3, 5, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                         response_ids=torch.randint(4, 16, (3, 4), generator=generator),
                         response_mask=torch.ones(3, 4), rollout_logprobs=torch.zeros(3, 4),
                         prompts=[""] * 3, completions=[""] * 3)
    input_ids, attention_mask, position_ids = sequence_inputs(batch)
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        kept = response_logits(model, batch)
    assert kept.shape == (3, 4, full.shape[-1])
    # logits at position t predict token t + 1: response token j is predicted at position P - 1 + j
    torch.testing.assert_close(kept, full[:, 4:8])


def test_hf_generation_never_ends_before_min_new_tokens():
    from kuberlhf.engines.generation import HFGenerationEngine, SamplingParams

    tokenizer = build_char_tokenizer("0123456789+=")
    engine = HFGenerationEngine(build_tiny_llama(tokenizer, max_position_embeddings=32), tokenizer)
    # a random model ends a sequence with probability ~1/16 per token: without the floor, some of the
    # 32 rows would end within 6 tokens (all 32 reaching 6 has probability ~1e-4)
    batch = engine.generate(["1+2=", "3+4="], SamplingParams(16, 8, 1.0, 1.0, min_new_tokens=6), seed=0)
    assert int(batch.response_lengths().min()) >= 6

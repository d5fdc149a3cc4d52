"""SFT packing: best-fit decreasing by hand, and packed log-probs equal to each example's own."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kuberlhf.data.examples import Examples, make_batch
from kuberlhf.data.packing import pack_by_best_fit, packed_batch, packed_logprobs
from kuberlhf.models.forward import response_logprobs
from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama


def test_best_fit_decreasing_by_hand():
    # Longest first: 5 opens pack 0 (room 3), 4 opens pack 1 (room 4), the first 3 fits pack 0 best (room 3
    # beats 4), the second 3 goes to pack 1 (room 1), and 1 fills pack 1.
    assert pack_by_best_fit([5, 4, 3, 3, 1], 8) == [[0, 2], [1, 3, 4]]
    assert pack_by_best_fit([8, 8], 8) == [[0], [1]]
    assert pack_by_best_fit([], 8) == []


def test_an_item_longer_than_a_pack_is_refused():
    with pytest.raises(ValueError, match="item 1 is 9 long"):
        pack_by_best_fit([3, 9], 8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 16), max_size=60), st.integers(16, 40))
def test_every_item_is_packed_once_and_no_pack_overflows(lengths, max_length):
    packs = pack_by_best_fit(lengths, max_length)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= max_length for pack in packs)
    # best fit never leaves two packs that could have been one
    loads = sorted(sum(lengths[i] for i in pack) for pack in packs)
    assert len(loads) < 2 or loads[0] + loads[1] > max_length


def test_packed_batch_layout():
    examples = Examples(prompts=[[5, 6], [7]], completions=[[8, 2], [9, 9, 2]])
    batch = packed_batch(examples, [[0, 1]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 8, 2, 7, 9, 9, 2]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch.target_mask.tolist() == [[0, 0, 1, 1, 0, 1, 1, 1]]
    padded = packed_batch(examples, [[0], [1]], pad_token_id=0)
    assert padded.input_ids.tolist() == [[5, 6, 8, 2], [7, 9, 9, 2]]
    assert packed_batch(Examples([[5]], [[2]]), [[0]], 0).to(torch.device("cpu")).input_ids.tolist() == [[5, 2]]


def test_packed_logprobs_equal_each_examples_own():
    tokenizer = build_char_tokenizer("0123456789+=")
    model = build_tiny_llama(tokenizer, seed=0).eval()
    examples = Examples(prompts=[[5, 6, 7], [8], [9, 10, 4, 5]], completions=[[11, 12, 2], [4, 5, 6, 7, 2], [6, 2]])
    packs = pack_by_best_fit([len(p) + len(c) for p, c in zip(examples.prompts, examples.completions)], 12)
    assert packs == [[0, 1], [2]]  # two examples share the first sequence
    with torch.no_grad():
        logprobs, mask = packed_logprobs(model, packed_batch(examples, packs, tokenizer.pad_token_id))
        alone, _ = response_logprobs(model, make_batch(examples.prompts, examples.completions, 0), temperature=1.0)
    packed = torch.cat([logprobs[row][mask[row].bool()] for row in range(len(packs))])
    expected = torch.cat([alone[i, : len(examples.completions[i])] for pack in packs for i in pack])
    torch.testing.assert_close(packed, expected, rtol=0, atol=1e-5)

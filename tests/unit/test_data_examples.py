"""Offline examples: prompts and completions tokenized apart, EOS appended, truncation counted, batches padded
the way the forward helpers expect."""

from __future__ import annotations

import json

import pytest

from kuberlhf.data.examples import make_batch, tokenize_dataset
from kuberlhf.data.formats import load_dataset
from kuberlhf.errors import UserError
from kuberlhf.models.tiny import build_char_tokenizer

TOKENIZER = build_char_tokenizer("0123456789+=")
EOS = TOKENIZER.eos_token_id


def dataset(tmp_path, rows, algorithm):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset(path, algorithm)


def ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False).input_ids


def test_pairs_keep_the_prompt_apart_and_end_both_answers_with_eos(tmp_path):
    examples = tokenize_dataset(dataset(tmp_path, [{"prompt": "2+2=", "chosen": "4", "rejected": "15"}], "dpo"),
                                TOKENIZER, max_length=16)
    assert examples.prompts == [ids("2+2=")]
    assert examples.completions == [ids("4") + [EOS]]
    assert examples.rejected == [ids("15") + [EOS]]


def test_kto_examples_carry_labels_and_a_mismatched_completion_for_the_reference_point(tmp_path):
    rows = [{"prompt": "1+1=", "completion": "2", "label": True}, {"prompt": "2+2=", "completion": "5", "label": False}]
    examples = tokenize_dataset(dataset(tmp_path, rows, "kto"), TOKENIZER, max_length=16)
    assert examples.labels == [True, False]
    assert examples.kl_completions == [examples.completions[1], examples.completions[0]]


def test_language_modelling_text_trains_on_every_token_after_the_first(tmp_path):
    examples = tokenize_dataset(dataset(tmp_path, [{"text": "1+1=2"}], "sft"), TOKENIZER, max_length=16)
    assert TOKENIZER.bos_token_id is not None
    assert examples.prompts == [[TOKENIZER.bos_token_id]]
    assert examples.completions == [ids("1+1=2") + [EOS]]


def test_long_completions_are_cut_at_max_length_and_counted(tmp_path):
    examples = tokenize_dataset(dataset(tmp_path, [{"prompt": "1+1=", "completion": "22222222"}], "sft"),
                                TOKENIZER, max_length=8)
    assert len(examples.prompts[0]) + len(examples.completions[0]) == 8
    assert examples.truncated == 1


def test_a_prompt_that_fills_max_length_names_its_row(tmp_path):
    data = dataset(tmp_path, [{"prompt": "1+1=", "completion": "2"}, {"prompt": "11111111+1=", "completion": "2"}],
                   "sft")
    with pytest.raises(UserError, match=r"d.jsonl:2: the prompt is 11 tokens, .*maxLength = 8"):
        tokenize_dataset(data, TOKENIZER, max_length=8)


def test_conversations_need_a_chat_template(tmp_path):
    row = {"prompt": [{"role": "user", "content": "1+1"}], "completion": [{"role": "assistant", "content": "2"}]}
    with pytest.raises(UserError, match="has no chat template"):
        tokenize_dataset(dataset(tmp_path, [row], "sft"), TOKENIZER, max_length=32)


def test_conversations_are_rendered_with_the_chat_template(tmp_path):
    tokenizer = build_char_tokenizer("0123456789+=:ua ")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }} {% endfor %}" \
                              "{% if add_generation_prompt %}a:{% endif %}"
    row = {"prompt": [{"role": "user", "content": "1+1"}], "completion": [{"role": "assistant", "content": "2"}]}
    examples = tokenize_dataset(dataset(tmp_path, [row], "sft"), tokenizer, max_length=32)
    text = tokenizer.decode(examples.prompts[0]), tokenizer.decode(examples.completions[0])
    assert text == ("u:1+1 a:", "2 ")  # the rendered conversation ends its own turn: no EOS added


def test_batches_pad_prompts_left_and_completions_right():
    batch = make_batch([[5, 6], [7]], [[8], [9, 10, 11]], pad_token_id=0)
    assert batch.prompt_ids.tolist() == [[5, 6], [0, 7]]
    assert batch.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert batch.response_ids.tolist() == [[8, 0, 0], [9, 10, 11]]
    assert batch.response_mask.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]

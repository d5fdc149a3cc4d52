"""Prompt files, the prompt sampler, batches and reward-function calls."""

from __future__ import annotations

import math

import pytest
import torch

from kuberlhf.data.batch import RolloutBatch, split_indices
from kuberlhf.data.prompts import load_prompts
from kuberlhf.data.sampler import PromptSampler
from kuberlhf.errors import UserError
from kuberlhf.reward_functions import call_reward_function, import_reward_function


def write(tmp_path, text: str, name: str = "train.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_prompts_and_extra_columns_are_loaded(tmp_path):
    data = load_prompts(write(tmp_path, '{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2=", "answer": "4"}\n'))
    assert data.prompts == ["1+1=", "2+2="]
    assert data.columns == {"answer": ["2", "4"]}
    assert data.where(1) == f"{tmp_path}/train.jsonl:3"


def test_bad_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{"prompt": "a"}\n{"prompt": "b",}\n')
    with pytest.raises(UserError, match=r"train.jsonl:2: invalid JSON"):
        load_prompts(path)


def test_missing_prompt_field_names_line_and_fields(tmp_path):
    path = write(tmp_path, '{"prompt": "a"}\n{"question": "b"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:2: missing field 'prompt' \(fields: question\)"):
        load_prompts(path)


def test_non_string_prompt_is_rejected(tmp_path):
    with pytest.raises(UserError, match=r"train.jsonl:1: field 'prompt' must be a string or a list of messages, got int"):
        load_prompts(write(tmp_path, '{"prompt": 3}\n'))


def test_empty_file_is_rejected(tmp_path):
    with pytest.raises(UserError, match=r"no rows"):
        load_prompts(write(tmp_path, "\n"))


def test_sampler_visits_every_row_once_per_epoch():
    sampler = PromptSampler(num_rows=10, batch_size=4, seed=3)
    seen = sampler.next_indices() + sampler.next_indices() + sampler.next_indices()[:2]
    assert sorted(seen) == list(range(10))
    assert sampler.state() == {"epoch": 1, "position": 2}


def test_sampler_resumes_with_the_same_batches():
    straight = PromptSampler(10, 4, seed=1)
    batches = [straight.next_indices() for _ in range(5)]
    resumed = PromptSampler(10, 4, seed=1)
    for _ in range(2):
        resumed.next_indices()
    state = resumed.state()
    fresh = PromptSampler(10, 4, seed=1)
    fresh.load_state(state)
    assert [fresh.next_indices() for _ in range(3)] == batches[2:]


def test_a_sampler_resumed_on_smaller_data_starts_its_next_epoch():
    sampler = PromptSampler(6, 4, seed=1)
    sampler.load_state({"epoch": 2, "position": 8})  # the checkpoint's data had 10 rows
    assert sampler.state() == {"epoch": 3, "position": 0}
    assert sorted(sampler.next_indices() + sampler.next_indices()[:2]) == list(range(6))


def test_split_indices_is_contiguous_and_balanced():
    assert split_indices(5, 2) == [[0, 1, 2], [3, 4]]
    assert split_indices(1, 3) == [[0]]


def make_batch(prompt_width: int, response_width: int, rows: int) -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=torch.ones(rows, prompt_width, dtype=torch.long),
        prompt_mask=torch.ones(rows, prompt_width, dtype=torch.long),
        response_ids=torch.full((rows, response_width), 2),
        response_mask=torch.ones(rows, response_width),
        rollout_logprobs=torch.zeros(rows, response_width),
        prompts=["p"] * rows,
        completions=["c"] * rows,
    )


def test_concat_pads_prompts_left_and_responses_right():
    joined = RolloutBatch.concat([make_batch(2, 3, 1), make_batch(4, 1, 2)])
    assert joined.prompt_ids.shape == (3, 4) and joined.response_ids.shape == (3, 3)
    assert joined.prompt_mask[0].tolist() == [0, 0, 1, 1]
    assert joined.response_mask[1].tolist() == [1, 0, 0]
    assert len(joined.prompts) == 3


def test_reward_function_is_imported_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def length(prompts, completions, **cols):\n    return [len(c) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    function = import_reward_function("my_rewards:length")
    assert call_reward_function(function, "my_rewards:length", ["p", "q"], ["ab", "c"], {}) == [2.0, 1.0]


def test_reward_function_import_errors_name_the_field():
    with pytest.raises(UserError, match=r"spec.reward.function: cannot import module 'no_such_module_xyz'"):
        import_reward_function("no_such_module_xyz:f")
    with pytest.raises(UserError, match=r"module 'math' has no attribute 'nope'"):
        import_reward_function("math:nope")
    with pytest.raises(UserError, match=r"math:pi is a float, not a callable"):
        import_reward_function("math:pi")


def test_reward_function_results_are_checked():
    with pytest.raises(UserError, match=r"reward function f returned 1 values for 2 completions"):
        call_reward_function(lambda prompts, completions: [1.0], "f", ["a", "b"], ["x", "y"], {})
    with pytest.raises(UserError, match=r"reward function f returned nan for row 1 \(prompt 'b', completion 'y'\)"):
        call_reward_function(lambda prompts, completions: [1.0, math.nan], "f", ["a", "b"], ["x", "y"], {})
    with pytest.raises(UserError, match=r"reward function f raised ZeroDivisionError"):
        call_reward_function(lambda prompts, completions: [1 / 0], "f", ["a"], ["x"], {})


def test_reward_functions_are_called_as_trl_calls_them():
    from trl.rewards import get_soft_overlong_punishment, think_format_reward

    from kuberlhf.reward_functions import RewardLog, TrainerState

    prompts = [[{"role": "user", "content": "2+2?"}]] * 2
    completions = [[{"role": "assistant", "content": "<think>sum</think>4"}], [{"role": "assistant", "content": "4"}]]
    ids = [[5, 6, 7], [5]]
    assert call_reward_function(think_format_reward, "think", prompts, completions, {"answer": ["4", "4"]},
                                ids) == [1.0, 0.0]
    overlong = get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)  # reads completion_ids
    assert call_reward_function(overlong, "overlong", prompts, completions, {}, ids) == [-0.5, 0.0]

    def shaped(prompts, completions, answer, trainer_state, log_metric, log_extra, **kwargs):
        log_metric("progress", trainer_state.global_step / trainer_state.max_steps)
        log_extra("parsed", [c[0]["content"][-1] for c in completions])
        return [None if c[0]["content"] == "4" else 1.0 for c in completions]

    log = RewardLog()
    assert call_reward_function(shaped, "shaped", prompts, completions, {"answer": ["4", "4"]}, ids,
                                TrainerState(3, 12), log) == [1.0, 0.0]  # None: no reward, counted 0 as in TRL
    assert log.metric_means() == {"reward_fn/progress": 0.25}
    assert log.columns == {"parsed": ["4", "4"]}


def test_a_reward_function_gets_only_the_arguments_it_names_and_may_be_async():
    import asyncio

    def plain(completions, answer):  # no **kwargs: the extra TRL arguments are left out
        return [float(c == a) for c, a in zip(completions, answer)]

    async def remote(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [len(c) for c in completions]

    assert call_reward_function(plain, "plain", ["p", "q"], ["4", "5"], {"answer": ["4", "4"]}) == [1.0, 0.0]
    assert call_reward_function(remote, "remote", ["p"], ["abc"], {}) == [3.0]
    loops = []

    async def judge(prompts, completions, **kwargs):  # clients, locks and queues bind to the loop they first see
        loops.append(asyncio.get_running_loop())
        return [1.0] * len(completions)

    for _ in range(2):
        assert call_reward_function(judge, "judge", ["p"], ["a"], {}) == [1.0]
    assert loops[0] is loops[1]  # one loop for the run, as in TRL

"""The RLHFJob spec: defaults, cross-field rules, and error messages that name the field."""

from __future__ import annotations

import copy

import pytest

from kuberlhf.errors import UserError
from kuberlhf.jobfile import apply_override, validate_job
from kuberlhf.spec import RLHFJob

VALID = {
    "apiVersion": "kuberlhf.io/v1alpha1",
    "kind": "RLHFJob",
    "metadata": {"name": "demo"},
    "spec": {
        "algorithm": "grpo",
        "policy": {"model": "models/policy"},
        "reward": {"function": "tasks.math:exact_match"},
        "data": {"train": "train.jsonl"},
    },
}


def job_with(**changes: object) -> dict:
    raw = copy.deepcopy(VALID)
    for path, value in changes.items():
        apply_override(raw, f"{path.replace('__', '.')}={value}")
    return raw


def error_lines(raw: dict) -> list[str]:
    with pytest.raises(UserError) as caught:
        validate_job(raw, source="job.yaml")
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


def test_minimal_job_gets_documented_defaults():
    job = validate_job(copy.deepcopy(VALID))
    assert job.spec.rollout.samples_per_prompt == 4
    assert job.spec.training.kl.coef is None and job.spec.kl_coef == 0  # grpo: TRL's default, no reference model
    assert job.spec.clip_range == (0.2, 0.2)
    assert job.spec.resources.placement == "colocate"
    assert job.output_dir == "runs/demo"
    assert job.checkpoint_dir == "runs/demo/checkpoints"


def test_negative_learning_rate_names_the_field_and_value():
    assert error_lines(job_with(spec__training__learningRate=-1)) == [
        "spec.training.learningRate: must be > 0, got -1"
    ]


def test_unknown_field_is_rejected_with_a_suggestion():
    assert error_lines(job_with(spec__rollout__temprature=0.7)) == [
        "spec.rollout.temprature: unknown field (did you mean 'temperature'?)"
    ]


def test_unknown_top_level_spec_field_lists_nothing_close_as_allowed_fields():
    (line,) = error_lines(job_with(spec__zzz=1))
    assert line.startswith("spec.zzz: unknown field (allowed: algorithm, checkpoint, cluster, critic,")


def test_wrong_type_names_expected_type():
    assert error_lines(job_with(spec__training__steps="many")) == [
        "spec.training.steps: must be an integer, got 'many'"
    ]


def test_unknown_algorithm_lists_the_choices():
    (line,) = error_lines(job_with(spec__algorithm="a2c"))
    assert line == ("spec.algorithm: must be one of 'ppo', 'grpo', 'rloo', 'reinforce_pp', 'gspo', 'dapo', 'cispo', 'sft', "
                    "'rm', 'dpo' or 'kto', got 'a2c'")


def test_missing_required_field():
    raw = copy.deepcopy(VALID)
    del raw["spec"]["data"]
    assert error_lines(raw) == ["spec.data: required field is missing"]


def test_reward_needs_exactly_one_source():
    raw = job_with(spec__reward__model="rm")
    assert error_lines(raw) == ["spec.reward: set exactly one of model, function or url, got model and function"]


def test_reward_function_must_be_module_colon_name():
    assert error_lines(job_with(spec__reward__function="tasks.math.exact")) == [
        "spec.reward.function: must look like 'package.module:callable', got 'tasks.math.exact'"
    ]


def test_group_algorithms_need_two_samples_per_prompt():
    assert error_lines(job_with(spec__rollout__samplesPerPrompt=1)) == [
        "spec.rollout.samplesPerPrompt: grpo compares samples of the same prompt, needs at least 2, got 1"
    ]


def test_mini_batch_must_divide_the_batch():
    assert error_lines(job_with(spec__training__miniBatchSize=48)) == [
        "spec.training.miniBatchSize: must divide promptsPerStep x samplesPerPrompt = 64, got 48"
    ]


def test_critic_is_only_for_ppo():
    assert error_lines(job_with(spec__critic__model="x")) == [
        "spec.critic: only ppo uses a critic; remove it for grpo"
    ]


def test_ppo_gets_a_default_critic():
    job = validate_job(job_with(spec__algorithm="ppo"))
    assert job.spec.critic is None and job.spec.critic_settings.model is None  # defaults resolved on use


def test_job_name_must_be_a_dns_label():
    assert error_lines(job_with(metadata__name="My_Job")) == [
        "metadata.name: must be lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "got 'My_Job'"
    ]


def test_wrong_kind_and_api_version_are_reported_together():
    raw = job_with(kind="Job", apiVersion="v1")
    assert error_lines(raw) == [
        "apiVersion: must be one of 'kuberlhf.io/v1alpha1', got 'v1'",
        "kind: must be one of 'RLHFJob', got 'Job'",
    ]


def test_kl_defaults_follow_the_algorithm():
    grpo = validate_job(copy.deepcopy(VALID)).spec
    ppo = validate_job(job_with(spec__algorithm="ppo")).spec
    assert (grpo.kl_penalty, grpo.kl_estimator) == ("loss", "k3")
    assert (ppo.kl_penalty, ppo.kl_estimator) == ("reward", "k1")


def test_zero_kl_needs_no_reference_model():
    assert "reference" not in validate_job(job_with(spec__training__kl__coef=0)).spec.roles
    assert "reference" in validate_job(job_with(spec__training__kl__coef=0.01)).spec.roles
    ppo = validate_job(job_with(spec__algorithm="ppo")).spec
    assert ppo.kl_coef == 0.05 and ppo.roles == ("policy", "rollout", "reference", "critic")


def test_every_field_has_a_description():
    undocumented = []

    def walk(model: type, path: str) -> None:
        for name, field in model.model_fields.items():
            if not field.description:
                undocumented.append(f"{path}.{field.alias or name}")
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    walk(arg, f"{path}.{field.alias or name}")

    walk(RLHFJob, "")
    assert undocumented == []


def test_checked_in_spec_reference_matches_the_spec():
    from pathlib import Path

    from kuberlhf.spec_docs import render_spec_markdown

    checked_in = Path(__file__).resolve().parents[2] / "docs" / "spec.md"
    assert checked_in.read_text() == render_spec_markdown(), "regenerate: kuberlhf spec-docs > docs/spec.md"


def test_min_new_tokens_cannot_exceed_max_new_tokens():
    assert error_lines(job_with(spec__rollout__minNewTokens=65)) == [
        "spec.rollout: minNewTokens (65) must not exceed maxNewTokens (64)"
    ]


OFFLINE = {"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "offline"},
           "spec": {"algorithm": "dpo", "policy": {"model": "models/policy"}, "data": {"train": "pairs.jsonl"}}}


def offline_with(**changes: object) -> dict:
    raw = copy.deepcopy(OFFLINE)
    for path, value in changes.items():
        apply_override(raw, f"{path.replace('__', '.')}={value}")
    return raw


def test_offline_algorithms_need_no_reward_and_get_their_settings_block():
    spec = validate_job(OFFLINE, source="test").spec
    assert spec.is_offline and spec.reward is None and spec.settings.beta == 0.1 and spec.update_size == 8


def test_online_algorithms_still_need_a_reward():
    raw = copy.deepcopy(VALID)
    del raw["spec"]["reward"]
    assert error_lines(raw) == ["spec.reward: grpo needs a reward: set reward.model or reward.function"]


def test_offline_jobs_refuse_online_only_settings():
    assert error_lines(offline_with(spec__reward__function="a.b:c")) == [
        "spec.reward: dpo learns from data.train and uses no reward; remove it"]
    assert error_lines(offline_with(spec__training__promptsPerStep=4)) == [
        "spec.training.promptsPerStep: online algorithms only; dpo uses training.batchSize and training.epochs"]
    assert error_lines(offline_with(spec__rollout__maxNewTokens=4)) == [
        "spec.rollout: dpo learns from data.train; it samples nothing, remove rollout"]


def test_settings_of_another_algorithm_are_refused():
    assert error_lines(offline_with(spec__kto__beta=0.2)) == [
        "spec.kto: settings of algorithm kto; remove them for dpo"]


def test_offline_batch_must_split_over_workers_and_micro_batches():
    assert error_lines(offline_with(spec__training__batchSize=6, spec__resources__policy__workers=4)) == [
        "spec.resources.policy.workers: each update's 6 sequences are split evenly over the policy's workers; "
        "6 is not divisible by 4"]
    assert error_lines(offline_with(spec__training__batchSize=8, spec__training__microBatchSize=3)) == [
        "spec.training.microBatchSize: must divide each policy worker's share of an update (8 sequences), got 3"]


def test_the_removed_prompt_field_says_what_replaced_it():
    assert error_lines(job_with(spec__data__promptField="question")) == [
        "spec.data.promptField: replaced by columns; write columns: {prompt: question}"
    ]


def test_the_moved_checkpoint_uri_says_where_it_went():
    assert error_lines(job_with(spec__checkpoint__uri="gs://bucket/x")) == [
        "spec.checkpoint.uri: replaced by spec.output.uri, which holds the checkpoints (<uri>/checkpoints) and the "
        "final model (<uri>/final); move it there"
    ]
    assert error_lines(job_with(spec__output__uri="bucket/no-scheme"))[0].startswith("spec.output.uri: ")

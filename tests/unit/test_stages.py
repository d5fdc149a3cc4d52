"""Chained jobs: each stage is checked as a job of its own, and earlier outputs are wired into later stages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from kuberlhf.errors import UserError
from kuberlhf.jobfile import apply_override, load_job, validate_job
from kuberlhf.stages import stage_jobs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CHAIN = load_job(EXAMPLES / "chain-tiny.yaml")


def raw_chain() -> dict:
    return CHAIN.model_dump(by_alias=True, exclude_unset=True)


def errors(raw: dict) -> list[str]:
    with pytest.raises(UserError) as caught:
        validate_job(raw, source="job.yaml")
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


def test_stages_train_the_previous_policy_and_score_with_the_newest_reward_model():
    sft, rm, ppo = stage_jobs(CHAIN)
    assert sft.spec.policy.model == "examples/assets/model"
    assert rm.spec.policy.model == "examples/assets/reward-base"  # the stage's own starting point
    raw = raw_chain()
    del raw["spec"]["stages"][1]["policy"]
    assert stage_jobs(validate_job(raw))[1].spec.policy.model == "runs/chain-tiny/sft/final"  # default: the SFT model
    assert ppo.spec.policy.model == "runs/chain-tiny/sft/final"
    assert ppo.spec.reward.model == "runs/chain-tiny/rm/final"
    assert [job.output_dir for job in (sft, rm, ppo)] == [f"runs/chain-tiny/{n}" for n in ("sft", "rm", "ppo")]
    assert ppo.spec.critic_settings is not None and ppo.spec.reference.model is None  # critic from rm, reference = policy


def test_job_sections_carry_over_only_to_stages_that_use_them():
    raw = raw_chain()
    raw["spec"]["reward"] = {"function": "kuberlhf.tasks.addition:exact_match_reward"}
    del raw["spec"]["stages"][1]  # no rm stage: ppo scores with the job's reward function
    sft, ppo = stage_jobs(validate_job(raw))
    assert sft.spec.reward is None
    assert ppo.spec.reward.function == "kuberlhf.tasks.addition:exact_match_reward"


def test_a_mistake_in_a_stage_names_the_stage_and_the_field():
    raw = raw_chain()
    raw["spec"]["stages"][1]["training"]["batchSize"] = 0
    assert errors(raw) == ["spec.stages.1.training.batchSize: must be >= 1, got 0"]


def test_a_stage_must_hold_together_as_a_job():
    raw = raw_chain()
    raw["spec"]["stages"][2]["training"]["miniBatchSize"] = 48
    assert errors(raw) == ["spec.stages.2.training.miniBatchSize: must divide promptsPerStep x samplesPerPrompt "
                           "= 128, got 48"]


def test_stages_and_a_job_algorithm_do_not_mix_and_names_are_unique():
    raw = raw_chain()
    apply_override(raw, "spec.algorithm=dpo")
    assert errors(raw) == ["spec.algorithm: with stages, each stage names its own algorithm; remove spec.algorithm"]
    raw = raw_chain()
    raw["spec"]["stages"][1]["name"] = "sft"
    assert errors(raw) == ["spec.stages: stage names must differ, sft repeats"]


def test_a_job_without_stages_still_needs_an_algorithm():
    raw = copy.deepcopy(raw_chain())
    del raw["spec"]["stages"]
    assert errors(raw) == ["spec.algorithm: required field is missing (or give stages)"]


def test_each_stage_keeps_its_checkpoints_apart_locally_and_in_the_object_store():
    raw = raw_chain()
    raw["spec"]["checkpoint"] = {"dir": "/ckpt/chain", "everySteps": 5}
    raw["spec"]["output"] = {"uri": "gs://bucket/chain/", "mergeLora": False}
    stages = stage_jobs(validate_job(raw))
    assert [job.checkpoint_dir for job in stages] == [f"/ckpt/chain/{n}" for n in ("sft", "rm", "ppo")]
    assert [job.spec.output.uri for job in stages] == [f"gs://bucket/chain/{n}" for n in ("sft", "rm", "ppo")]
    assert {job.spec.output.merge_lora for job in stages} == {False}
    assert {job.spec.checkpoint.every_steps for job in stages} == {5}

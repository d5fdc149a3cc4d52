"""`kuberlhf init`: the method follows the data (and reward), the reasons say why, and the job it writes is valid."""

from __future__ import annotations

import json

import pytest
import yaml

from kuberlhf.cli import main
from kuberlhf.errors import UserError
from kuberlhf.init_job import recommend
from kuberlhf.jobfile import validate_job
from kuberlhf.workers.placement import engine_memory_share, plan_placement


def data_file(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIRS = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]
LABELS = [{"prompt": "1+1=", "completion": "2", "label": True}, {"prompt": "1+1=", "completion": "5", "label": False},
          {"prompt": "2+2=", "completion": "4", "label": True}]


def test_preference_pairs_get_dpo_and_the_reward_model_alternative(tmp_path):
    advice = recommend(data_file(tmp_path, PAIRS))
    assert advice.algorithm == "dpo"
    assert any("no reward model" in r for r in advice.reasons) and any("algorithm rm" in r for r in advice.reasons)
    assert validate_job(advice.job).spec.algorithm == "dpo"


def test_labels_get_kto_and_a_note_on_prompts_that_could_be_paired(tmp_path):
    advice = recommend(data_file(tmp_path, LABELS))
    assert advice.algorithm == "kto"
    assert any(r.startswith("1 prompts have both") for r in advice.reasons)
    validate_job(advice.job)


def test_demonstrations_get_sft(tmp_path):
    advice = recommend(data_file(tmp_path, [{"prompt": "1+1=", "completion": "2"}]))
    assert advice.algorithm == "sft" and advice.job["spec"]["training"]["learningRate"] == 2.0e-5
    validate_job(advice.job)


def test_prompts_with_a_reward_function_get_grpo_and_with_a_reward_model_ppo(tmp_path):
    prompts = data_file(tmp_path, [{"prompt": "1+1=", "answer": "2"}])
    grpo = recommend(prompts, reward="kuberlhf.tasks.addition:exact_match_reward")
    assert grpo.algorithm == "grpo" and grpo.job["spec"]["reward"] == {"function": "kuberlhf.tasks.addition:exact_match_reward"}
    ppo = recommend(prompts, reward="models/reward")
    assert ppo.algorithm == "ppo" and ppo.job["spec"]["reward"] == {"model": "models/reward"}
    service = recommend(prompts, reward="http://rewards:8000/score")
    assert service.algorithm == "ppo" and service.job["spec"]["reward"] == {"url": "http://rewards:8000/score"}
    for advice in (grpo, ppo, service):
        validate_job(advice.job)


def test_prompts_without_a_reward_are_refused_with_what_to_pass(tmp_path):
    with pytest.raises(UserError, match="pass --reward package.module:function"):
        recommend(data_file(tmp_path, [{"prompt": "1+1="}]))


def test_gpus_shard_the_policy_in_bf16_and_give_the_offline_reference_one(tmp_path):
    advice = recommend(data_file(tmp_path, PAIRS), gpus=2)
    assert advice.job["spec"]["resources"] == {"policy": {"workers": 2, "cpus": 4, "gpus": 1},
                                               "reference": {"workers": 1, "cpus": 4, "gpus": 1}}
    assert advice.job["spec"]["training"]["zeroStage"] == 2 and advice.job["spec"]["training"]["bf16"] is True
    assert "ZeRO-2" in advice.reasons[-1] and "vLLM" not in advice.reasons[-1]
    validate_job(advice.job)


def test_gpus_place_every_online_role_on_every_gpu_taking_turns(tmp_path):
    prompts = data_file(tmp_path, [{"prompt": "1+1=", "answer": "2"}])
    advice = recommend(prompts, reward="models/reward", gpus=2)
    spec = validate_job(advice.job).spec
    assert spec.roles == ("policy", "rollout", "reward", "reference", "critic")
    bundles, plan = plan_placement(spec.resources, list(spec.roles))
    assert bundles == [{"CPU": 4.0, "GPU": 1.0}] * 2  # GPU i holds rank i of every role
    for role in spec.roles:
        assert [(p.bundle_index, p.num_gpus) for p in plan[role]] == [(0, 0.2), (1, 0.2)]
    # each vLLM engine takes a fifth of its GPU's memory, and the reasons say so
    assert engine_memory_share(plan["rollout"][0].num_gpus, spec.rollout.gpu_memory_utilization) == 0.2
    assert "each vLLM engine takes 0.20 of its GPU's memory" in advice.reasons[-1]
    grpo = validate_job(recommend(prompts, reward="kuberlhf.tasks.addition:exact_match_reward", gpus=1).job).spec
    assert grpo.roles == ("policy", "rollout") and grpo.training.zero_stage == 0
    assert {role: (r.workers, r.gpus) for role, r in ((n, getattr(grpo.resources, n)) for n in grpo.roles)} == \
        {"policy": (1, 1.0), "rollout": (1, 1.0)}


def test_cli_writes_the_job_and_never_overwrites(tmp_path, capsys):
    data = data_file(tmp_path, PAIRS, name="My Pairs.jsonl")
    out = tmp_path / "job.yaml"
    assert main(["init", "--data", data, "--out", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    assert written["spec"]["algorithm"] == "dpo" and written["metadata"]["name"] == "dpo-my-pairs"
    assert "algorithm: dpo" in capsys.readouterr().out
    assert main(["init", "--data", data, "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err

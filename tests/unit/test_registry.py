"""The algorithm registry: what every descriptor must provide, the roles a job starts (with and without KL), and
that the operator reserves exactly the roles the run starts."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from kuberlhf.algorithms import POLICY_LOSSES
from kuberlhf.algorithms.registry import (ALGORITHMS, DOCS_BEGIN, DOCS_END, NAMES, ONLINE, SETTINGS_BLOCKS,
                                          render_algorithms_markdown)
from kuberlhf.jobfile import validate_job
from kuberlhf.spec import RLHFJobSpec, StageSpec
from kuberlhf_operator.rayjob import cluster_size

ESTIMATORS = {"gae", "grpo", "rloo", "reinforce_pp"}  # trainers/experience.py
ROOT = Path(__file__).resolve().parents[2]


def job(algorithm: str, **training) -> dict:
    spec = {"algorithm": algorithm, "policy": {"model": "models/policy"}, "data": {"train": "train.jsonl"},
            "training": training}
    if algorithm in ONLINE:
        spec["reward"] = {"function": "kuberlhf.tasks.addition:exact_match_reward"}
    return {"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "t"}, "spec": spec}


@pytest.mark.parametrize("name", NAMES)
def test_every_descriptor_provides_what_every_part_asks_for(name):
    a = ALGORITHMS[name]
    assert a.name == name and a.kind in ("online", "offline") and a.summary and a.data_format and a.source
    if a.online:
        assert a.advantage in ESTIMATORS
        assert a.policy_loss in POLICY_LOSSES
        assert a.kl_penalty in ("reward", "loss") and a.kl_coef >= 0 and a.reference in ("kl", "always")
        low, high = a.clip
        assert (low is None or 0 < low < 1) and high > 0
        assert not (a.dual_clip and a.policy_loss != "ppo"), "the dual clip is PPO's token clip"
    else:
        from kuberlhf.trainers.offline_loop import OFFLINE_LOSSES

        assert a.policy_loss in OFFLINE_LOSSES and a.advantage is None and not a.critic
    if a.settings is not None:  # its own block, spec.<name>, defaults when omitted
        assert name in RLHFJobSpec.model_fields and name in StageSpec.model_fields
        a.settings()
    spec = validate_job(job(name)).spec
    assert spec.descriptor is a and spec.roles[0] == "policy"
    assert ("rollout" in spec.roles) == a.online and ("critic" in spec.roles) == a.critic
    if a.settings is not None:
        assert spec.settings == a.settings() and getattr(spec, name) is None  # resolved on use, not stored


def test_the_spec_the_crd_and_the_docs_list_exactly_the_registry():
    assert typing.get_args(RLHFJobSpec.model_fields["algorithm"].annotation)[0].__args__ == NAMES
    crd = (ROOT / "helm" / "kuberlhf" / "crds" / "rlhfjobs.kuberlhf.io.yaml").read_text()
    assert all(f"- {name}" in crd for name in NAMES)
    page = (ROOT / "docs" / "algorithms.md").read_text()
    table = page[page.index(DOCS_BEGIN): page.index(DOCS_END) + len(DOCS_END)] + "\n"
    assert table == render_algorithms_markdown(), "regenerate the table of docs/algorithms.md"
    assert all(f"| `{name}` |" in table for name in NAMES)
    assert set(SETTINGS_BLOCKS) == {"sft", "dpo", "kto", "dapo"}


@pytest.mark.parametrize("name", ["grpo", "gspo", "dapo", "cispo"])
def test_the_grpo_family_starts_no_reference_unless_kl_is_asked_for(name):
    assert validate_job(job(name)).spec.roles == ("policy", "rollout")
    assert validate_job(job(name, kl={"coef": 0.01})).spec.roles == ("policy", "rollout", "reference")


def test_kl_and_clip_defaults_come_from_the_descriptor_and_the_spec_overrides_them():
    assert validate_job(job("ppo")).spec.kl_coef == 0.05
    assert validate_job(job("rloo")).spec.roles == ("policy", "rollout", "reference")
    assert validate_job(job("dapo")).spec.clip_range == (0.2, 0.28)
    assert validate_job(job("gspo")).spec.clip_range == (3e-4, 4e-4)
    assert validate_job(job("cispo")).spec.clip_range == (None, 4.0)
    assert validate_job(job("cispo", clipRatioLow=0.5, clipRatioHigh=1.0)).spec.clip_range == (0.5, 1.0)
    assert validate_job(job("dpo")).spec.roles == ("policy", "reference")
    assert validate_job(job("sft")).spec.roles == ("policy",)


def test_settings_that_do_not_apply_to_the_algorithm_are_refused():
    from kuberlhf.errors import UserError

    for raw, message in [
        (job("gspo", dualClip=3.0), "spec.training.dualClip: applies to PPO's token clip"),
        (job("grpo", kl={"target": 6.0}), "spec.training.kl.target: the adaptive controller scales"),
    ]:
        with pytest.raises(UserError, match=message):
            validate_job(raw)
    raw = job("grpo")
    raw["spec"]["dapo"] = {"overlongBuffer": 2}
    with pytest.raises(UserError, match="spec.dapo: settings of algorithm dapo; remove them for grpo"):
        validate_job(raw)
    raw = job("dapo")
    raw["spec"]["dapo"] = {"overlongBuffer": 65}
    with pytest.raises(UserError, match=r"spec.dapo.overlongBuffer: must be at most rollout.maxNewTokens \(64\)"):
        validate_job(raw)


@pytest.mark.parametrize("kl", [None, 0.02])
def test_the_operator_reserves_exactly_the_roles_the_run_starts(tmp_path, kl):
    from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama, save_model_dir
    from kuberlhf.preflight import check_local_inputs

    tokenizer = build_char_tokenizer("0123456789+= ")
    save_model_dir(build_tiny_llama(tokenizer), tokenizer, tmp_path / "model")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n"
                                                  for i in range(20)))
    raw = job("grpo", **({"kl": {"coef": kl}} if kl else {}))
    raw["spec"].update(policy={"model": str(tmp_path / "model")}, data={"train": str(tmp_path / "train.jsonl")},
                       output={"dir": str(tmp_path / "out")}, rollout={"maxNewTokens": 8})
    # each role on bundles of its own with a distinct CPU count, so the reserved CPUs name the roles
    cpus = {"policy": 1, "rollout": 2, "reward": 4, "reference": 8, "critic": 16}
    raw["spec"]["resources"] = {"placement": "separate", **{role: {"cpus": n} for role, n in cpus.items()}}
    started = validate_job(raw)
    models = check_local_inputs(started).models  # what launch starts one worker group for
    expected = {"policy", "rollout"} | ({"reference"} if kl else set())
    assert set(models) == set(started.spec.roles) == expected
    assert cluster_size(started.spec, "t").cpus == sum(cpus[role] for role in expected)


def test_a_resume_fingerprint_holds_the_resolved_defaults_given_or_not():
    from kuberlhf.storage.fingerprint import fingerprint

    implicit, explicit = validate_job(job("dapo")).spec, validate_job(job("dapo", kl={"coef": 0})).spec
    raw = job("dapo", clipRatioHigh=0.28)
    raw["spec"]["dapo"] = {"dynamicSampling": True}
    assert fingerprint(implicit) == fingerprint(explicit) == fingerprint(validate_job(raw).spec)
    assert fingerprint(implicit)["training.kl.coef"] == 0 and fingerprint(implicit)["dapo.overlongBuffer"] == 0
    assert fingerprint(validate_job(job("dapo", kl={"coef": 0.01})).spec)["training.kl.coef"] == 0.01

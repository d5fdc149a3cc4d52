"""Reading job files and --set overrides."""

from __future__ import annotations

import pytest

from kuberlhf.errors import UserError
from kuberlhf.jobfile import apply_override, load_job, read_yaml

JOB = """\
apiVersion: kuberlhf.io/v1alpha1
kind: RLHFJob
metadata:
  name: demo
spec:
  algorithm: grpo
  policy: {model: m}
  reward: {function: "a.b:c"}
  data: {train: t.jsonl}
"""


def test_override_sets_nested_values_with_yaml_types(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    job = load_job(path, ["spec.training.steps=7", "spec.training.kl.coef=0", "spec.rollout.temperature=0.5"])
    assert job.spec.training.steps == 7
    assert job.spec.training.kl.coef == 0
    assert job.spec.rollout.temperature == 0.5


def test_override_is_validated_like_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    with pytest.raises(UserError, match=r"spec.training.steps: must be >= 1, got 0"):
        load_job(path, ["spec.training.steps=0"])


def test_override_without_equals_sign_is_explained():
    with pytest.raises(UserError, match=r"expected PATH=VALUE"):
        apply_override({}, "spec.training.steps")


def test_override_through_a_scalar_is_explained():
    with pytest.raises(UserError, match=r"--set spec.algorithm.x: spec.algorithm is a str, not a mapping or a list"):
        apply_override({"spec": {"algorithm": "ppo"}}, "spec.algorithm.x=1")


def test_override_names_a_list_item_by_its_index_in_either_spelling():
    raw = {"spec": {"stages": [{"name": "sft"}, {"name": "rm", "training": {"epochs": 1}}]}}
    apply_override(raw, "spec.stages.1.training.epochs=8")
    apply_override(raw, "spec.stages[0].training.learningRate=0.001")
    apply_override(raw, "spec.stages[1]={name: dpo}")
    assert raw["spec"]["stages"] == [{"name": "sft", "training": {"learningRate": 0.001}}, {"name": "dpo"}]


@pytest.mark.parametrize("path", ["spec.stages.2.name", "spec.stages.x.name", "spec.stages[-1].name"])
def test_override_with_a_bad_list_index_names_the_list_and_its_size(path):
    with pytest.raises(UserError, match=r"spec.stages is a list of 2 items; name one by its index 0..1"):
        apply_override({"spec": {"stages": [{}, {}]}}, f"{path}=x")


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: x\nspec:\n  a: [1, 2\n  b: 3\n")
    with pytest.raises(UserError, match=r"job.yaml:4:\d+: invalid YAML"):
        read_yaml(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"nope.yaml: no such file"):
        read_yaml(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(UserError, match=r"expected a YAML mapping"):
        read_yaml(path)

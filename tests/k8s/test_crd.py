"""The CRD is generated from the spec: the checked-in copy matches, the schema is structural (what the API
server accepts), every example validates against it, and bad specs are rejected naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from kuberlhf.crd import crd_document, crd_yaml
from kuberlhf.status import Condition, Progress, RLHFJobStatus

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN = REPO / "helm" / "kuberlhf" / "crds" / "rlhfjobs.kuberlhf.io.yaml"
SCHEMA = crd_document()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_the_checked_in_crd_is_what_the_spec_generates():
    assert CHECKED_IN.read_text() == crd_yaml(), "regenerate: kuberlhf crd > helm/kuberlhf/crds/rlhfjobs.kuberlhf.io.yaml"


def nodes(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def test_the_schema_is_structural():
    for path, node in nodes(SCHEMA):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        forbidden = {"$ref", "anyOf", "oneOf", "allOf", "default", "title", "const"} & set(node)
        assert not forbidden, f"{path}: {forbidden}"
        assert node.get("additionalProperties", {}) is not False, f"{path}: additionalProperties false"
        if node.get("type") == "object" and path.count(".") > 1 and "properties" in node:
            assert all("description" in child for child in node["properties"].values()), path


def test_printer_columns_and_status_subresource():
    version = crd_document()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Algorithm", "Phase", "Stage", "Step", "Reward", "ETA", "Restarts", "Age"]
    assert version["subresources"] == {"status": {}}
    for column in version["additionalPrinterColumns"][:-1]:  # every column points at a declared field
        node = SCHEMA
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == column["type"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_example_validates_against_the_crd_schema(example):
    OAS30Validator(SCHEMA).validate(yaml.safe_load(example.read_text()))


def mutated(path: str, value: Any) -> dict[str, Any]:
    job = yaml.safe_load((REPO / "examples" / "ppo-tiny.yaml").read_text())
    *parents, last = path.split(".")
    node = job
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return job


@pytest.mark.parametrize("path, value, message", [
    ("spec.algorithm", "sac", "'sac' is not one of ['ppo', 'grpo'"),
    ("spec.training.steps", 0, "0 is less than the minimum of 1"),
    ("spec.training.steps", "ten", "'ten' is not of type 'integer'"),
    ("spec.rollout.temperature", 0, "0 is less than or equal to the minimum of 0"),
    ("spec.policy.lora", {"quantize": "8bit"}, "'8bit' is not one of ['4bit']"),
    ("spec.resources.placement", "anywhere", "'anywhere' is not one of"),
])
def test_bad_specs_are_rejected_naming_the_problem(path, value, message):
    errors = [error for error in OAS30Validator(SCHEMA).iter_errors(mutated(path, value))]
    assert errors, f"{path}={value!r} passed"
    assert any(message in error.message for error in errors), [e.message for e in errors]
    assert any(".".join(str(p) for p in error.absolute_path).startswith(path) for error in errors)


def test_a_status_the_operator_writes_validates():
    status = RLHFJobStatus(
        observed_generation=2, phase="Running", ray_job_name="ppo-tiny-abc12",
        conditions=[Condition(type="Running", status="True", reason="RayJobRunning", message="step 3 of 40",
                              last_transition_time="2026-11-24T12:00:00Z", observed_generation=2)],
        progress=Progress(step=3, total_steps=40, steps="3/40", percent=7.5, eta_seconds=120.0, reward=0.4),
    )
    document = {"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "x"},
                "spec": mutated("spec.algorithm", "ppo")["spec"],
                "status": status.model_dump(by_alias=True, exclude_none=True)}
    OAS30Validator(SCHEMA).validate(document)
    document["status"]["conditions"][0]["status"] = "Maybe"
    assert list(OAS30Validator(SCHEMA).iter_errors(document))


# ------------------------------------------------------------------------------------ CEL (x-kubernetes-validations)


def cel_rules(node: dict[str, Any]) -> list[dict[str, str]]:
    return node.get("x-kubernetes-validations", [])


def cel_holds(rule: str, new: Any, old: Any = None) -> bool:
    """Evaluate a CEL rule as the API server does: `self` the new value, `oldSelf` the stored one (updates)."""
    import celpy

    environment = celpy.Environment()
    program = environment.program(environment.compile(rule))
    activation = {"self": celpy.json_to_cel(new)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return bool(program.evaluate(activation))


def spec_rules_hold(new_spec: dict[str, Any], old_spec: dict[str, Any]) -> list[str]:
    """The messages of the spec's transition rules that refuse this update."""
    return [r["message"] for r in cel_rules(SCHEMA["properties"]["spec"]) if not cel_holds(r["rule"], new_spec, old_spec)]


def test_cel_refuses_spec_changes_after_creation_except_suspend():
    job = yaml.safe_load((REPO / "examples" / "ppo-tiny.yaml").read_text())
    spec = job["spec"]
    assert spec_rules_hold(spec, spec) == []  # a status write or a no-op update
    assert spec_rules_hold({**spec, "suspend": True}, spec) == []
    changed = {**spec, "training": {**spec["training"], "steps": 999}}
    assert spec_rules_hold(changed, spec) == ["spec.training cannot change after the job is created (only "
                                              "spec.suspend can): delete and re-create the RLHFJob"]
    added = {**spec, "stages": [{"name": "a"}]}
    assert any(m.startswith("spec.stages ") for m in spec_rules_hold(added, spec))
    removed = {k: v for k, v in spec.items() if k != "rollout"}
    assert any(m.startswith("spec.rollout ") for m in spec_rules_hold(removed, spec))
    # every spec field but suspend has its rule
    assert {r["message"].split()[0] for r in cel_rules(SCHEMA["properties"]["spec"])} == \
        {f"spec.{name}" for name in SCHEMA["properties"]["spec"]["properties"] if name != "suspend"}


def test_cel_refuses_names_kuberay_cannot_carry_and_two_reward_sources():
    (name_rule,) = cel_rules(SCHEMA)
    assert cel_holds(name_rule["rule"], {"metadata": {"name": "a" * 47}, "spec": {}})
    assert not cel_holds(name_rule["rule"], {"metadata": {"name": "a" * 48}, "spec": {}})
    (reward_rule,) = cel_rules(SCHEMA["properties"]["spec"]["properties"]["reward"])
    assert cel_holds(reward_rule["rule"], {"function": "m:f"})
    assert not cel_holds(reward_rule["rule"], {"function": "m:f", "url": "http://x"})
    assert not cel_holds(reward_rule["rule"], {"batchSize": 4})
    stage_reward = SCHEMA["properties"]["spec"]["properties"]["stages"]["items"]["properties"]["reward"]
    assert cel_rules(stage_reward) == [reward_rule]

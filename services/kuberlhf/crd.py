"""The `rlhfjobs.kuberlhf.io` CustomResourceDefinition, generated from the spec (`kuberlhf crd`).

pydantic's JSON Schema of `RLHFJobSpec` and `RLHFJobStatus` becomes a *structural* OpenAPI v3 schema, the
form the API server requires: references inlined, `Optional[X]` as `nullable`, `const` as a one-value
`enum`, JSON Schema's numeric `exclusiveMinimum` as OpenAPI's boolean form, a union of different types (a
string or a list) as `x-kubernetes-preserve-unknown-fields`. Defaults are not copied into the schema (the API
server would write them into every stored object, and the job tells a field the user set from a default);
they go into the descriptions `kubectl explain` shows. CEL rules (`add_cel_rules`) refuse at admission what
the API server can check: the name's length, changes to a submitted spec, one reward source. Other checks that
span fields stay in pydantic: the operator validates every spec and fails the job with `InvalidSpec` and
pydantic's message.

The checked-in copy (helm/kuberlhf/crds/rlhfjobs.kuberlhf.io.yaml) is tested against this output.
"""

from __future__ import annotations

import json
from typing import Any

from kuberlhf.spec import API_VERSION, KIND, MAX_NAME_LENGTH, RLHFJobSpec
from kuberlhf.status import RLHFJobStatus

GROUP, VERSION = API_VERSION.split("/")
PLURAL, SINGULAR, SHORT_NAMES = "rlhfjobs", "rlhfjob", ["rlhf"]
CRD_NAME = f"{PLURAL}.{GROUP}"

PRINTER_COLUMNS = [
    {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.progress.stage"},
    {"name": "Step", "type": "string", "jsonPath": ".status.progress.steps"},
    {"name": "Reward", "type": "number", "jsonPath": ".status.progress.reward"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROPPED = {"title", "default", "additionalProperties", "$defs"}


def crd_document() -> dict[str, Any]:
    """The CRD as a dict (YAML-ready)."""
    schema = {
        "type": "object",
        "description": "A reinforcement-learning-from-human-feedback training job (PPO, GRPO, RLOO, REINFORCE++, "
                       "SFT, reward model, DPO, KTO, or a chain of them) run on a KubeRay RayJob.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(RLHFJobSpec.model_json_schema(by_alias=True, mode="validation")),
            "status": structural_schema(RLHFJobStatus.model_json_schema(by_alias=True, mode="validation")),
        },
    }
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    conditions.update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    add_cel_rules(schema)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": ["all"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


MUTABLE_SPEC_FIELDS = {"suspend"}


def add_cel_rules(schema: dict[str, Any]) -> None:
    """CEL `x-kubernetes-validations` the API server checks at admission (Kubernetes 1.25+): a name KubeRay can
    carry, a spec that does not change after creation except `suspend` (transition rules: a running Ray job
    cannot change its model or data), and the cross-field rules CEL can express. pydantic checks all of them
    again in the operator, for API servers without CEL."""
    schema["x-kubernetes-validations"] = [{
        "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name: at most {MAX_NAME_LENGTH} characters (the RayJob and the Ray pods are named "
                   "after the job)",
    }]
    spec = schema["properties"]["spec"]
    spec["x-kubernetes-validations"] = [immutable_rule(name) for name in spec["properties"]
                                        if name not in MUTABLE_SPEC_FIELDS]
    for node in _object_nodes(spec):
        if set(node["properties"]) >= {"model", "function", "url"}:  # RewardSpec, at the top or in a stage
            node["x-kubernetes-validations"] = [{
                "rule": "[has(self.model), has(self.function), has(self.url)].exists_one(given, given)",
                "message": "set exactly one of model, function or url",
            }]


def immutable_rule(field: str) -> dict[str, str]:
    return {
        "rule": f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})",
        "message": f"spec.{field} cannot change after the job is created (only spec.suspend can): delete and "
                   "re-create the RLHFJob",
    }


def _object_nodes(node: dict[str, Any]):
    if "properties" in node:
        yield node
        for child in node["properties"].values():
            yield from _object_nodes(child)
    if "items" in node:
        yield from _object_nodes(node["items"])


def crd_yaml() -> str:
    import yaml

    header = "# Generated by `kuberlhf crd` from services/kuberlhf/spec.py and status.py: do not edit.\n"
    return header + yaml.safe_dump(crd_document(), sort_keys=False, width=120)


def structural_schema(json_schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON Schema (with `$defs`) as a structural OpenAPI v3 schema."""
    return _convert(json_schema, json_schema.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _inline_reference(node, defs)
    if "anyOf" in node:
        return _convert_union(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _convert(child, defs) for name, child in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "description":
            out[key] = " ".join(value.split())  # docstrings' hard line breaks
        else:
            out[key] = value
    if isinstance(node.get("additionalProperties"), dict):  # a map: dict[str, X]
        out["additionalProperties"] = _convert(node["additionalProperties"], defs)
    elif node.get("additionalProperties") is True:  # dict[str, Any]: a Kubernetes object passed through as is
        out["x-kubernetes-preserve-unknown-fields"] = True
    _describe_default(out, node)
    return out


def _inline_reference(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[1]]
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}  # the field's own description wins
    return merged


def _convert_union(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    options = [_inline_reference(option, defs) for option in node["anyOf"]]
    present = [option for option in options if option.get("type") != "null"]
    nullable = len(present) < len(options)
    if len(present) == 1:
        out = _convert({**present[0], **{k: v for k, v in node.items() if k != "anyOf"}}, defs)
    elif all(option.get("type") == present[0].get("type") and "const" in option for option in present):
        out = {"type": present[0]["type"], "enum": [option["const"] for option in present],
               **_kept(node)}
    else:  # e.g. a string or a list of strings: no single structural type
        out = {"x-kubernetes-preserve-unknown-fields": True, **_kept(node)}
        out["description"] = (out.get("description", "") + " One of: " +
                              ", ".join(_type_name(option) for option in present) + ".").strip()
    if nullable:
        out["nullable"] = True
    _describe_default(out, node)
    return out


def _kept(node: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in node.items() if k not in _DROPPED and k != "anyOf"}
    if "description" in kept:
        kept["description"] = " ".join(kept["description"].split())
    return kept


def _type_name(option: dict[str, Any]) -> str:
    if option.get("type") == "array":
        return f"a list of {option.get('items', {}).get('type', 'values')}s"
    return f"a {option.get('type', 'value')}"


def _describe_default(out: dict[str, Any], node: dict[str, Any]) -> None:
    """Append the default to the description, unless it says it already or there is nothing to say."""
    if "default" not in node or node["default"] in (None, [], {}):
        return
    description = out.get("description", "")
    if "default" in description.lower():
        return
    out["description"] = f"{description} Default: {json.dumps(node['default'])}.".strip()

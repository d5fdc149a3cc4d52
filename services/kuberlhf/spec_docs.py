"""Render the RLHFJob field reference (docs/spec.md) from the spec's own field docstrings.

`kuberlhf spec-docs` prints it; a unit test fails when the checked-in docs/spec.md drifts from the spec.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kuberlhf.spec import RLHFJob

HEADER = """# RLHFJob reference

Generated from `services/kuberlhf/spec.py` by `kuberlhf spec-docs > docs/spec.md`; do not edit by hand.
Field names are camelCase, as in YAML. Unknown fields are rejected.
"""


def render_spec_markdown() -> str:
    sections: list[str] = [HEADER]
    for path, model in _sections(RLHFJob, ""):
        sections.append(_render_section(path, model))
    return "\n".join(sections)


def _sections(model: type[BaseModel], path: str, recurse: bool = True) -> list[tuple[str, type[BaseModel]]]:
    found = [(path or "(top level)", model)]
    if not recurse:
        return found
    for name, field in model.model_fields.items():
        child = _nested_model(field.annotation)
        if child is not None:
            found += _sections(child, f"{path}.{field.alias or name}".lstrip("."))
        item = _list_item_model(field.annotation)
        if item is not None:  # e.g. stages: its sections are the job's own, documented above
            found += _sections(item, f"{path}.{field.alias or name}[]".lstrip("."), recurse=False)
    return found


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(arg) is list:
            return _nested_model(typing.get_args(arg)[0])
    return None


def _render_section(path: str, model: type[BaseModel]) -> str:
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"## `{path}`", "", doc, "", "| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{field.alias or name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in rest) + " \\| null"
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is dict:
        return "map of string"
    if origin is list:
        return "list of " + _type_name(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(annotation, str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(see section)" if isinstance(value, BaseModel) else f"`{value}`"
    if field.default is None or field.default is PydanticUndefined:
        return "—"
    return f"`{str(field.default).lower() if isinstance(field.default, bool) else field.default}`"

"""The base class of every RLHFJob spec section (shared by `spec.py` and `spec_offline.py`)."""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """Base of every spec section: camelCase aliases, unknown fields rejected, docstrings as descriptions.

    Scalars are strict where pydantic's lax mode would guess: `true` is not the integer 1 (`steps: true`), `1` or
    "yes" is not a boolean, and no number is infinite or NaN (`learningRate: .inf`). Numbers written as strings
    (`1e-5`, which YAML 1.1 reads as a string) are still numbers."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_default=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _strict_scalars(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kinds = _scalar_kinds(cls)
        for key, value in data.items():
            kind = kinds.get(key)
            if kind in ("integer", "number") and isinstance(value, bool):
                raise ValueError(f"{key}: must be {'an integer' if kind == 'integer' else 'a number'}, "
                                 f"got {value!r}")
            if kind == "boolean" and not isinstance(value, bool) and value is not None:
                raise ValueError(f"{key}: must be true or false, got {str(value)[:40]!r}")
        return data


@functools.cache
def _scalar_kinds(model: type[BaseModel]) -> dict[str, str]:
    """Field name and alias -> 'integer', 'number' or 'boolean', for fields of exactly that scalar type
    (optionally None)."""
    kinds = {}
    for name, field in model.model_fields.items():
        args = [a for a in _union_args(field.annotation) if a is not type(None)]
        if len(args) != 1:
            continue
        kind = {bool: "boolean", int: "integer", float: "number"}.get(args[0])
        if kind:
            kinds[name] = kind
            if field.alias:
                kinds[field.alias] = kind
    return kinds


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)

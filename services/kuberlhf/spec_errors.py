"""pydantic's validation errors as one line each that names the field path
(`spec.training.learningRate: must be > 0, got -1`), with a suggestion for a mistyped field name.

Light (pydantic + the spec): the CLI, the stage checks and the operator use it.
"""

from __future__ import annotations

import difflib
import re
import reprlib
from typing import Any

from pydantic import BaseModel

from kuberlhf.spec import RLHFJob

MAX_ERROR_LINES, MAX_ERROR_LINE = 20, 400  # what one invalid job prints, however large it is
_PATH_PREFIX = re.compile(r"^([A-Za-z][\w.]*): (.*)$", re.DOTALL)


def format_error(error: dict[str, Any]) -> str:
    """One pydantic error as `field.path: what is wrong, got VALUE`."""
    loc = [str(part) for part in error["loc"]]
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    message = _describe(kind, ctx, value, error["msg"], loc)
    match = _PATH_PREFIX.match(message)
    if kind == "value_error" and match:  # our validators name the sub-field themselves
        loc, message = loc + match.group(1).split("."), match.group(2)
    line = f"{'.'.join(loc) or '(top level)'}: {message}"
    return line if len(line) <= MAX_ERROR_LINE else line[:MAX_ERROR_LINE - 3] + "..."


def _describe(kind: str, ctx: dict[str, Any], value: Any, default: str, loc: list[str]) -> str:
    got = f", got {short_repr(value)}"
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        return "must be " + bounds[kind].format(**{k: _number(v) for k, v in ctx.items()}) + got
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field" + _suggestion(loc)
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind in ("string_type",):
        return f"must be a string{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping{got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters{got}"
    if kind == "value_error":
        return str(ctx.get("error", default)).removeprefix("Value error, ")
    return f"{default}{got}"


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error echoes what it was given, never megabytes of it."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number(value: Any) -> Any:
    """0.0 -> 0, so messages read `must be > 0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _suggestion(loc: list[str]) -> str:
    """' (did you mean X?)' or the list of allowed fields, for an unknown field at `loc`."""
    parent = _model_at(RLHFJob, loc[:-1])
    if parent is None:
        return ""
    allowed = sorted(field.alias or name for name, field in parent.model_fields.items())
    close = difflib.get_close_matches(loc[-1], allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    for part in loc:
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        candidates = [a for a in _type_args(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _type_args(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    return list(args) if args else [annotation]

"""Read an RLHFJob from YAML, apply `--set` overrides, validate, and turn pydantic errors into
one line per problem that names the field path (`spec.training.learningRate: must be > 0, got -1`).

Light on purpose (pydantic + PyYAML only): the operator uses it too.
"""

from __future__ import annotations

import difflib
import reprlib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kuberlhf.errors import UserError
from kuberlhf.safe_yaml import parse_yaml
from kuberlhf.spec import RLHFJob

MAX_ERROR_LINES, MAX_ERROR_LINE = 20, 400  # what one invalid job prints, however large it is
_PATH_PREFIX = re.compile(r"^([A-Za-z][\w.]*): (.*)$", re.DOTALL)


def load_job(path: str | Path, overrides: list[str] | None = None) -> RLHFJob:
    """Load, override and validate a job file; raise UserError listing every problem."""
    raw = read_yaml(path)
    for override in overrides or []:
        apply_override(raw, override)
    return validate_job(raw, source=str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping (kuberlhf.safe_yaml: UTF-8, no duplicate keys, bounded aliases and depth), with
    `file:line:column` on errors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a job file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror}") from None
    raw = parse_yaml(data, str(path))
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a YAML mapping with apiVersion, kind, metadata and spec")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `dotted.path=value` override in place; the value is parsed as YAML (`5`, `true`, `[1,2]`).
    A list item is named by its index, as validation errors name it: `spec.stages.2.training.steps=5`
    (or helm's `spec.stages[2].training.steps=5`)."""
    key, sep, value_text = override.partition("=")
    if not sep or not key:
        raise UserError(f"--set {override!r}: expected PATH=VALUE, for example spec.training.steps=50")
    try:
        value = yaml.safe_load(value_text) if value_text else None  # `key=` is null, as `key:` in YAML
    except yaml.YAMLError:
        value = value_text
    parts = re.sub(r"\[([^]]*)\]", r".\1", key).split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        slot: Any = _list_index(key, ".".join(parts[:depth]), part, node) if isinstance(node, list) else part
        if depth == len(parts) - 1:
            node[slot] = value
            return
        child = node[slot] if isinstance(node, list) else node.get(slot)
        if child is None:
            child = node[slot] = {}
        if not isinstance(child, (dict, list)):
            walked = ".".join(parts[: depth + 1])
            raise UserError(f"--set {key}: {walked} is a {type(child).__name__}, not a mapping or a list")
        node = child


def _list_index(key: str, walked: str, part: str, items: list) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise UserError(f"--set {key}: {walked} is a list of {len(items)} items; name one by its index "
                        f"0..{len(items) - 1}, got {part!r}")
    return int(part)


def validate_job(raw: dict[str, Any], source: str = "job") -> RLHFJob:
    """Validate a parsed job; raise UserError with one line per problem."""
    try:
        return RLHFJob.model_validate(raw)
    except ValidationError as err:
        lines = [format_error(error) for error in err.errors()]
        if len(lines) > MAX_ERROR_LINES:
            lines = lines[:MAX_ERROR_LINES] + [f"... and {len(lines) - MAX_ERROR_LINES} more problems"]
        raise UserError(f"{source}: invalid RLHFJob\n" + "\n".join(f"  {line}" for line in lines)) from None


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

"""Read an RLHFJob from YAML, apply `--set` overrides, validate, and turn pydantic errors into
one line per problem that names the field path (`spec.training.learningRate: must be > 0, got -1`).

Light on purpose (pydantic + PyYAML only): the operator uses it too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kuberlhf.errors import UserError
from kuberlhf.safe_yaml import parse_yaml
from kuberlhf.spec import RLHFJob
from kuberlhf.spec_errors import MAX_ERROR_LINES, format_error
from kuberlhf.stages import check_stages



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
    """Validate a parsed job, and each stage of a chained one as a job of its own; raise UserError with one line
    per problem."""
    try:
        job = RLHFJob.model_validate(raw)
    except ValidationError as err:
        lines = [format_error(error) for error in err.errors()]
        if len(lines) > MAX_ERROR_LINES:
            lines = lines[:MAX_ERROR_LINES] + [f"... and {len(lines) - MAX_ERROR_LINES} more problems"]
        raise UserError(f"{source}: invalid RLHFJob\n" + "\n".join(f"  {line}" for line in lines)) from None
    try:
        check_stages(job.spec)
    except ValueError as err:
        raise UserError(f"{source}: invalid RLHFJob\n  spec.{err}") from None
    return job

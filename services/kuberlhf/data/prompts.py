"""Prompt datasets for online RL: JSON lines with a prompt field plus any other columns.

Every problem names its file and line (`train.jsonl:17: missing field "prompt"`), and is found when the
file is loaded, before any Ray actor starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError


@dataclass
class PromptDataset:
    """Rows of one prompt file; `columns` are the fields other than the prompt (passed to reward functions)."""

    path: str
    prompts: list[str]
    columns: dict[str, list[Any]]
    line_numbers: list[int]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: list[int]) -> tuple[list[str], dict[str, list[Any]]]:
        """Prompts and columns of the given rows, in that order."""
        prompts = [self.prompts[i] for i in indices]
        columns = {name: [values[i] for i in indices] for name, values in self.columns.items()}
        return prompts, columns

    def where(self, index: int) -> str:
        """`file:line` of a row, for error messages."""
        return f"{self.path}:{self.line_numbers[index]}"


def load_prompts(path: str | Path, prompt_field: str = "prompt") -> PromptDataset:
    """Read a .jsonl prompt file; raise UserError naming the file and line of the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix not in (".jsonl", ".json"):
        raise UserError(f"{path}: expected a .jsonl file (one JSON object per line)")
    rows: list[dict[str, Any]] = []
    line_numbers: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            rows.append(_parse_row(line, f"{path}:{number}", prompt_field))
            line_numbers.append(number)
    if not rows:
        raise UserError(f"{path}: no rows (the file is empty)")
    names = sorted({key for row in rows for key in row if key != prompt_field})
    columns = {name: [row.get(name) for row in rows] for name in names}
    return PromptDataset(str(path), [row[prompt_field] for row in rows], columns, line_numbers)


def _parse_row(line: str, where: str, prompt_field: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if prompt_field not in row:
        raise UserError(f"{where}: missing field {prompt_field!r} (fields: {', '.join(sorted(row)) or 'none'})")
    prompt = row[prompt_field]
    if not isinstance(prompt, str) or not prompt:
        raise UserError(f"{where}: field {prompt_field!r} must be a non-empty string, got {prompt!r}")
    return row

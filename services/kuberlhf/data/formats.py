"""Training data of the offline stages, in TRL's dataset formats, read from jsonl, json, parquet or a saved
Hugging Face `datasets` directory.

| format | fields | used by |
|---|---|---|
| language modeling | `text`, or `messages` (a conversation) | sft |
| prompt-completion | `prompt`, `completion` | sft |
| preference | `prompt`, `chosen`, `rejected` | rm, dpo (kto after `unpaired_from_pairs`) |
| unpaired preference | `prompt`, `completion`, `label` (true = desirable) | kto |
| prompt-only | `prompt` | ppo, grpo, rloo, reinforce_pp |

Each text field is either a string (standard) or a list of `{"role", "content"}` messages (conversational,
rendered with the tokenizer's chat template later). A format is detected from each row's fields; every row of
a file must have the same one. Every problem names where it is: `train.jsonl:17: ...` for JSON lines,
`train.json[16]` for a JSON array, `train.parquet row 16` for parquet and saved datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError

FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "language_modeling": ("text",),
    "conversation": ("messages",),  # language modeling on a conversation
    "prompt_only": ("prompt",),
}
FORMAT_NAMES = {"preference": "preference (prompt, chosen, rejected)",
                "unpaired_preference": "unpaired preference (prompt, completion, label)",
                "prompt_completion": "prompt-completion (prompt, completion)",
                "language_modeling": "language modeling (text)", "conversation": "language modeling (messages)",
                "prompt_only": "prompt-only (prompt)"}
ALGORITHM_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt_completion", "language_modeling", "conversation"),
    "rm": ("preference",),
    "dpo": ("preference",),
    "kto": ("unpaired_preference",),
}


@dataclass
class Dataset:
    """Rows of one data file in one format; `where[i]` says where row i came from."""

    path: str
    format: str
    rows: list[dict[str, Any]]
    where: list[str]
    conversational: bool = False
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def load_dataset(path: str | Path, algorithm: str, convert: bool = False) -> Dataset:
    """Read a data file, detect and check its format against what `algorithm` trains on.

    A KTO job given preference pairs is refused with a hint, or converted (each pair gives one desirable and
    one undesirable completion) when `convert` is set."""
    dataset = detect_dataset(path)
    accepted = ALGORITHM_FORMATS[algorithm]
    if dataset.format == "preference" and algorithm == "kto" and convert:
        dataset = unpaired_from_pairs(dataset)
    if dataset.format not in accepted:
        wanted = " or ".join(FORMAT_NAMES[name] for name in accepted)
        hint = ""
        if dataset.format == "preference" and algorithm == "kto":
            hint = "; set data.convert: true to split each pair into a desirable and an undesirable example"
        elif dataset.format in ("preference", "unpaired_preference") and algorithm == "sft":
            hint = "; for preference data use algorithm dpo (pairs) or kto (labels)"
        raise UserError(f"{path}: {algorithm} trains on {wanted} data, this file is "
                        f"{FORMAT_NAMES[dataset.format]}{hint}")
    return dataset


def detect_dataset(path: str | Path) -> Dataset:
    """Read a data file and detect its format (every row must be in the same one)."""
    return _detect(str(path), read_records(path))


def read_records(path: str | Path) -> list[tuple[str, Any]]:
    """(where, row) for every row of a .jsonl, .json (array of objects), .parquet file or a directory saved
    with `datasets.Dataset.save_to_disk`."""
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    if path.suffix == ".jsonl":
        records = _read_jsonl(path)
    elif path.suffix == ".json":
        records = _read_json_array(path)
    elif path.suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise UserError(f"{path}: unknown data file type {path.suffix!r}; use .jsonl, .json, .parquet or a "
                        f"directory saved with datasets' save_to_disk")
    if not records:
        raise UserError(f"{path}: no rows (the file is empty)")
    return records


def unpaired_from_pairs(dataset: Dataset) -> Dataset:
    """Preference pairs -> unpaired preference: each pair gives its chosen answer labelled desirable and its
    rejected answer labelled undesirable (same prompt, both keep the pair's location)."""
    rows, where = [], []
    for row, place in zip(dataset.rows, dataset.where):
        rows += [{"prompt": row["prompt"], "completion": row["chosen"], "label": True},
                 {"prompt": row["prompt"], "completion": row["rejected"], "label": False}]
        where += [place, place]
    note = f"{dataset.path}: {len(dataset)} preference pairs split into {len(rows)} labelled completions"
    return Dataset(dataset.path, "unpaired_preference", rows, where, dataset.conversational, [*dataset.notes, note])


# ---------------------------------------------------------------------------------------------- detection


def _detect(path: str, records: list[tuple[str, Any]]) -> Dataset:
    detected: str | None = None
    conversational: bool | None = None
    rows, where = [], []
    for place, row in records:
        if not isinstance(row, dict):
            raise UserError(f"{place}: expected an object with named fields, got {type(row).__name__}")
        name = _row_format(row, place)
        if detected is None:
            detected = name
        elif name != detected:
            raise UserError(f"{place}: this row is {FORMAT_NAMES[name]} but the rows before it are "
                            f"{FORMAT_NAMES[detected]}; one file holds one format")
        is_chat = _check_fields(row, FORMAT_FIELDS[name], place)
        if conversational is None:
            conversational = is_chat
        elif is_chat != conversational:
            raise UserError(f"{place}: mixes conversational (lists of messages) and standard (strings) rows")
        rows.append(row)
        where.append(place)
    assert detected is not None  # read_records never returns no rows
    return Dataset(path, detected, rows, where, bool(conversational))


def _row_format(row: dict[str, Any], place: str) -> str:
    partial = any(key in row for key in ("chosen", "rejected", "completion", "label"))
    for name, fields in FORMAT_FIELDS.items():
        if all(key in row for key in fields) and not (name == "prompt_only" and partial):
            return name
    if "chosen" in row or "rejected" in row:
        missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
        raise UserError(f"{place}: a preference row needs prompt, chosen and rejected; missing {', '.join(missing)}")
    if "label" in row or "completion" in row:
        missing = [key for key in ("prompt", "completion") if key not in row]
        raise UserError(f"{place}: missing field {missing[0]!r} (fields: {', '.join(sorted(row)) or 'none'})")
    raise UserError(f"{place}: no known format in fields {', '.join(sorted(row)) or 'none'}; expected one of: "
                    + "; ".join(FORMAT_NAMES[n] for n in FORMAT_FIELDS))


def _check_fields(row: dict[str, Any], fields: tuple[str, ...], place: str) -> bool:
    """Check each field's type; returns whether the row is conversational."""
    kinds = set()
    for key in fields:
        value = row[key]
        if key == "label":
            if not isinstance(value, bool):
                raise UserError(f"{place}: field 'label' must be true or false, got {value!r}")
            continue
        if isinstance(value, str):
            if not value and key in ("prompt", "text"):
                raise UserError(f"{place}: field {key!r} is empty")
            kinds.add("standard")
        elif isinstance(value, list):
            _check_messages(value, f"{place}: field {key!r}")
            kinds.add("conversational")
        else:
            raise UserError(f"{place}: field {key!r} must be a string or a list of messages, got "
                            f"{type(value).__name__}")
    if len(kinds) > 1:
        raise UserError(f"{place}: mixes strings and lists of messages in {', '.join(fields)}")
    return kinds == {"conversational"}


def _check_messages(messages: list[Any], where: str) -> None:
    if not messages:
        raise UserError(f"{where}: the conversation is empty")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise UserError(f"{where}[{index}]: a message needs string 'role' and 'content', got {message!r}")


# ---------------------------------------------------------------------------------------------- readers


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})") from None
    return records


def _read_json_array(path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of objects (or use .jsonl, one object per line)")
    return [(f"{path}[{index}]", row) for index, row in enumerate(data)]


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several kinds for a damaged or foreign file
        raise UserError(f"{path}: cannot read parquet: {err}") from None
    return [(f"{path} row {index}", row) for index, row in enumerate(table.to_pylist())]


def _read_saved_dataset(path: Path) -> list[tuple[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{path}: not a dataset saved with datasets' save_to_disk: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise UserError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(loaded)})")
        loaded = loaded["train"]
    records = [(f"{path} row {index}", row) for index, row in enumerate(loaded)]
    if not records:
        raise UserError(f"{path}: no rows (the dataset is empty)")
    return records

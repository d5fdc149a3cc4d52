"""Training data of the offline stages, in TRL's dataset formats, read by `data.reader` (jsonl, json, parquet,
csv, saved `datasets` directories, Hub datasets).

| format | fields | used by |
|---|---|---|
| language modeling | `text`, or `messages` (a conversation) | sft |
| prompt-completion | `prompt`, `completion` | sft |
| preference | `prompt`, `chosen`, `rejected` | rm, dpo (kto after `unpaired_from_pairs`) |
| unpaired preference | `prompt`, `completion`, `label` (true = desirable) | kto |
| prompt-only | `prompt` | ppo, grpo, rloo, reinforce_pp |

Each text field is either a string (standard) or a list of `{"role", "content"}` messages (conversational,
rendered with the tokenizer's chat template later). A format is detected from each row's fields; every row of
a file must have the same one. Every problem names where it is (see `data.reader`): `train.jsonl:17: ...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberlhf.data.reader import Records, read_records
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


def load_dataset(source: str | Path, algorithm: str, convert: bool = False, split: str = "train",
                 subset: str | None = None, columns: dict[str, str] | None = None,
                 field: str = "spec.data.train") -> Dataset:
    """Read a stage's data (`data.reader`), detect its format and check it against what `algorithm` trains on.

    A KTO job given preference pairs is refused with a hint, or converted (each pair gives one desirable and
    one undesirable completion) when `convert` is set."""
    dataset = detect_dataset(read_records(source, split, subset, columns, field))
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
        raise UserError(f"{source}: {algorithm} trains on {wanted} data, this file is "
                        f"{FORMAT_NAMES[dataset.format]}{hint}")
    return dataset


def detect_dataset(records: Records) -> Dataset:
    """Detect the format of a source's rows (every row must be in the same one)."""
    detected: str | None = None
    conversational: bool | None = None
    for place, row in zip(records.where, records.rows):
        name = _row_format(row, place)
        if detected is None:
            detected = name
        elif name != detected:
            raise UserError(f"{place}: this row is {FORMAT_NAMES[name]} but the rows before it are "
                            f"{FORMAT_NAMES[detected]}; one file holds one format")
        if "label" in row:
            row["label"] = _label(row["label"], place)
        is_chat = check_fields(row, FORMAT_FIELDS[name], place)
        if conversational is None:
            conversational = is_chat
        elif is_chat != conversational:
            raise UserError(f"{place}: mixes conversational (lists of messages) and standard (strings) rows")
    assert detected is not None  # read_records never returns no rows
    return Dataset(records.source, detected, records.rows, records.where, bool(conversational))


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


TEXT_LABELS = {"true": True, "false": False, "1": True, "0": False}


def _label(value: Any, place: str) -> Any:
    """A KTO label as a bool: JSON booleans as they are, and the text a csv holds ("true"/"false", "1"/"0")."""
    if isinstance(value, str) and value.strip().lower() in TEXT_LABELS:
        return TEXT_LABELS[value.strip().lower()]
    return value


def check_fields(row: dict[str, Any], fields: tuple[str, ...], place: str) -> bool:
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

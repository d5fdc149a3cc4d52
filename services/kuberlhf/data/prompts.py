"""Prompt datasets of the online stages, and how a prompt becomes the tokens the policy continues.

A row has a `prompt` (after `spec.data.columns` renames) and any other columns, which reach the reward function
by name. A prompt is a string (standard) or a list of `{"role", "content"}` messages (conversational, TRL's
format); every row of a dataset is the same kind. A conversation is rendered with the policy tokenizer's chat
template and the generation prompt appended (`add_generation_prompt`), and the rendered text is tokenized
without adding special tokens again (the template holds them); a string is tokenized as is. Both rollout
engines, the prompt-length preflight and the trainer use `encode_prompts`, so they see the same tokens.

Every problem names its row (`train.jsonl:17: ...`) and is found before any Ray actor starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.data.formats import check_fields
from kuberlhf.data.reader import read_records
from kuberlhf.errors import UserError

Prompt = str | list[dict[str, Any]]
# Names the reward function's own keyword arguments take (TRL's); a data column cannot use them.
RESERVED_COLUMNS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


@dataclass
class PromptDataset:
    """Rows of one prompt source; `columns` are the fields other than the prompt (passed to reward functions)."""

    source: str
    prompts: list[Prompt]
    columns: dict[str, list[Any]]
    places: list[str]
    conversational: bool = False

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: list[int]) -> tuple[list[Prompt], dict[str, list[Any]]]:
        """Prompts and columns of the given rows, in that order."""
        prompts = [self.prompts[i] for i in indices]
        columns = {name: [values[i] for i in indices] for name, values in self.columns.items()}
        return prompts, columns

    def where(self, index: int) -> str:
        """Where a row came from (`file:line`, `file row N`), for error messages."""
        return self.places[index]


def load_prompts(source: str | Path, split: str = "train", subset: str | None = None,
                 columns: dict[str, str] | None = None, field: str = "spec.data.train") -> PromptDataset:
    """Read a prompt source through `data.reader`; raise UserError naming the first bad row."""
    records = read_records(source, split, subset, columns, field)
    kinds = set()
    for row, place in zip(records.rows, records.where):
        if "prompt" not in row:
            raise UserError(f"{place}: missing field 'prompt' (fields: {', '.join(sorted(row)) or 'none'}); "
                            f"spec.data.columns can name the column that holds it")
        kinds.add(check_fields(row, ("prompt",), place))
        if len(kinds) > 1:
            raise UserError(f"{place}: mixes conversational (lists of messages) and standard (string) prompts")
    names = sorted({key for row in records.rows for key in row if key != "prompt"})
    for name in names:
        if name in RESERVED_COLUMNS:
            raise UserError(f"{records.source}: column {name!r} would clash with the reward function's own "
                            f"argument of that name; rename it with spec.data.columns")
    return PromptDataset(str(records.source), [row["prompt"] for row in records.rows],
                         {name: [row.get(name) for row in records.rows] for name in names}, records.where,
                         conversational=kinds == {True})


def prompt_texts(tokenizer: Any, prompts: list[Prompt]) -> list[str]:
    """What the policy reads: strings as they are, conversations rendered with the chat template."""
    if prompts and isinstance(prompts[0], list):
        require_chat_template(tokenizer)
        return [tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                for messages in prompts]
    return list(prompts)


def encode_prompts(tokenizer: Any, prompts: list[Prompt]) -> tuple[list[str], list[list[int]]]:
    """Prompt texts and token ids; rendered conversations already hold their special tokens."""
    texts = prompt_texts(tokenizer, prompts)
    rendered = bool(prompts) and isinstance(prompts[0], list)
    return texts, tokenizer(texts, add_special_tokens=not rendered).input_ids


def require_chat_template(tokenizer: Any, field: str = "spec.policy.model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{field}: the data holds conversations (lists of messages) but the model's tokenizer has "
                        f"no chat template to render them; use string prompts, or a model whose tokenizer_config "
                        f"has a chat_template")

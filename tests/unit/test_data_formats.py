"""Offline-stage data: TRL formats detected from the fields, checked against the algorithm, read from every
supported container, and every problem located (file:line, file[index], file row N)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuberlhf.data.formats import load_dataset
from kuberlhf.data.reader import read_records
from kuberlhf.errors import UserError

PAIR = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
CHAT_PAIR = {"prompt": [{"role": "user", "content": "2+2?"}],
             "chosen": [{"role": "assistant", "content": "4"}],
             "rejected": [{"role": "assistant", "content": "5"}]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("row, algorithm, expected", [
    (PAIR, "dpo", "preference"),
    (PAIR, "rm", "preference"),
    ({"prompt": "2+2=", "completion": "4", "label": True}, "kto", "unpaired_preference"),
    ({"prompt": "2+2=", "completion": "4"}, "sft", "prompt_completion"),
    ({"text": "2+2=4"}, "sft", "language_modeling"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "sft",
     "conversation"),
])
def test_formats_are_detected_from_the_fields(tmp_path, row, algorithm, expected):
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", [row, row]), algorithm)
    assert dataset.format == expected and len(dataset) == 2


def test_conversational_rows_are_recognised(tmp_path):
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", [CHAT_PAIR]), "dpo")
    assert dataset.conversational and dataset.format == "preference"


def test_kto_given_pairs_says_how_to_convert_them(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR])
    with pytest.raises(UserError, match=r"kto trains on unpaired preference .* set data.convert: true"):
        load_dataset(path, "kto")


def test_kto_converts_pairs_when_asked(tmp_path):
    dataset = load_dataset(write_jsonl(tmp_path / "pairs.jsonl", [PAIR]), "kto", convert=True)
    assert dataset.format == "unpaired_preference"
    assert dataset.rows == [{"prompt": "2+2=", "completion": "4", "label": True},
                            {"prompt": "2+2=", "completion": "5", "label": False}]
    assert "split into 2" in dataset.notes[0]


def test_dpo_given_prompt_completion_data_names_both_formats(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(UserError, match=r"dpo trains on preference .* this file is prompt-completion"):
        load_dataset(path, "dpo")


def test_a_row_in_another_format_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [PAIR, PAIR, {"prompt": "x", "completion": "y"}])
    with pytest.raises(UserError, match=r"d.jsonl:3: this row is prompt-completion .* rows before it are preference"):
        load_dataset(path, "dpo")


def test_a_pair_missing_its_rejected_answer_names_the_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [PAIR, {"prompt": "x", "chosen": "y"}])
    with pytest.raises(UserError, match=r"d.jsonl:2: a preference row needs .* missing rejected"):
        load_dataset(path, "dpo")


def test_a_label_that_is_not_a_boolean_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "completion": "y", "label": "yes"}])
    with pytest.raises(UserError, match=r"d.jsonl:1: field 'label' must be true or false, got 'yes'"):
        load_dataset(path, "kto")


def test_a_malformed_message_is_located_inside_the_conversation(tmp_path):
    row = {**CHAT_PAIR, "chosen": [{"role": "assistant"}]}
    with pytest.raises(UserError, match=r"d.jsonl:1: field 'chosen'\[0\]: a message needs"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", [row]), "dpo")


def test_bad_json_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(PAIR) + "\n{not json\n")
    with pytest.raises(UserError, match=r"d.jsonl:2: invalid JSON"):
        read_records(path)


def test_json_arrays_parquet_and_saved_datasets_are_read_alike(tmp_path):
    import datasets

    rows = [PAIR, {"prompt": "1+1=", "chosen": "2", "rejected": "3"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    for source in ("d.json", "d.parquet", "saved"):
        dataset = load_dataset(tmp_path / source, "dpo")
        assert dataset.rows == rows, source
    assert load_dataset(tmp_path / "d.json", "dpo").where[1].endswith("d.json[1]")
    assert load_dataset(tmp_path / "d.parquet", "dpo").where[1].endswith("d.parquet row 1")


def test_missing_empty_and_unknown_files_are_clear(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no rows"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="d.csv: no rows"):
        read_records(tmp_path / "d.csv")
    (tmp_path / "d.txt").write_text("a,b\n")
    with pytest.raises(UserError, match="unknown data file type '.txt'"):
        read_records(tmp_path / "d.txt")

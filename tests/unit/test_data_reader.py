"""The one reader of every stage's data (Hugging Face `datasets`): every container reads the same rows, splits and
column renames apply, and every problem names its file and line or row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuberlhf.data.formats import load_dataset
from kuberlhf.data.prompts import encode_prompts, load_prompts
from kuberlhf.data.reader import read_records
from kuberlhf.errors import UserError

ROWS = [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"}]


def write_sources(directory: Path) -> dict[str, Path]:
    """The same two rows as jsonl (with a blank line), json array, parquet, csv, a saved DatasetDict and a
    directory laid out like a Hub dataset repository (a train and a test file)."""
    import datasets

    (directory / "d.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    (directory / "d.json").write_text(json.dumps(ROWS))
    table = datasets.Dataset.from_list(ROWS)
    table.to_parquet(str(directory / "d.parquet"))
    table.to_csv(str(directory / "d.csv"), index=False)
    datasets.DatasetDict({"train": table, "test": table.select([1])}).save_to_disk(str(directory / "saved"))
    repo = directory / "repo" / "data"
    repo.mkdir(parents=True)
    (repo / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (repo / "test.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    return {name: directory / name for name in ("d.jsonl", "d.json", "d.parquet", "d.csv", "saved", "repo")}


def test_every_container_reads_the_same_rows_and_names_each_row(tmp_path):
    sources = write_sources(tmp_path)
    places = {}
    for name, path in sources.items():
        records = read_records(path, columns={"prompt": "question"})
        assert [row["prompt"] for row in records.rows] == ["1+1=", "2+2="], name
        assert [row["answer"] for row in records.rows] == ["2", "4"], name  # csv values are text
        places[name] = records.where[1]
    assert places["d.jsonl"].endswith("d.jsonl:3")  # the blank line counted
    assert places["d.json"].endswith("d.json[1]")
    assert places["d.parquet"].endswith("d.parquet row 1")
    assert places["saved"].endswith("saved[train] row 1")
    assert places["repo"].endswith("repo[train] row 1")


def test_a_split_is_chosen_by_name_and_a_missing_one_lists_the_splits(tmp_path):
    sources = write_sources(tmp_path)
    for name in ("saved", "repo"):
        records = read_records(sources[name], split="test", columns={"prompt": "question"})
        assert [row["prompt"] for row in records.rows] == ["2+2="], name
    with pytest.raises(UserError, match=r"spec.data.eval: .*saved has no split 'dev' \(splits: train, test\)"):
        read_records(sources["saved"], split="dev", field="spec.data.eval")


def test_columns_that_are_missing_or_clash_are_named(tmp_path):
    path = write_sources(tmp_path)["d.jsonl"]
    with pytest.raises(UserError, match=r"spec.data.columns.prompt: .*d.jsonl has no column 'query' "
                                        r"\(columns: answer, question\)"):
        read_records(path, columns={"prompt": "query"})
    with pytest.raises(UserError, match=r"spec.data.columns.answer: .* has a column 'answer' too"):
        read_records(path, columns={"answer": "question"})


def test_a_hub_id_that_cannot_be_loaded_is_one_line_naming_the_field(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network here: fail at once
    with pytest.raises(UserError) as caught:
        read_records("someone/no-such-dataset", field="spec.data.train")
    message = str(caught.value)
    assert message.startswith("spec.data.train: 'someone/no-such-dataset' is not a local file or directory, and "
                              "loading it as a Hub dataset failed: ")
    assert "\n" not in message
    with pytest.raises(UserError, match=r"spec.data.train: missing/file.jsonl: no such file or directory"):
        read_records("missing/file.jsonl")


def test_a_bad_line_and_a_bad_row_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected a JSON object, got list"):
        read_records(bad)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"prompt": "a"}\n{"prompt": [{"role": "user", "content": "b"}]}\n')
    with pytest.raises(UserError, match=r"mixed.jsonl:2: mixes conversational"):
        load_prompts(mixed)
    parquet = tmp_path / "rows.parquet"
    import datasets

    datasets.Dataset.from_list([{"prompt": "2+2=", "chosen": "4", "rejected": "5"},
                                {"prompt": "3+3=", "chosen": "6", "rejected": None}]).to_parquet(str(parquet))
    with pytest.raises(UserError, match=r"rows.parquet row 1: a preference row needs prompt, chosen and rejected; "
                                        r"missing rejected"):
        load_dataset(parquet, "dpo")


def test_offline_and_online_stages_read_through_the_same_reader(tmp_path):
    sources = write_sources(tmp_path)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("q,good,bad\n2+2=,4,5\n")
    dataset = load_dataset(pairs, "dpo", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert dataset.format == "preference" and dataset.rows == [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    labels = tmp_path / "labels.csv"
    labels.write_text("prompt,completion,label\n2+2=,4,TRUE\n2+2=,5,false\n2+2=,6,0\n")
    assert [row["label"] for row in load_dataset(labels, "kto").rows] == [True, False, False]
    labels.write_text("prompt,completion,label\n2+2=,4,yes\n")
    with pytest.raises(UserError, match=r"labels.csv row 0: field 'label' must be true or false, got 'yes'"):
        load_dataset(labels, "kto")
    prompts = load_prompts(sources["saved"], split="test", columns={"prompt": "question"})
    assert prompts.prompts == ["2+2="] and prompts.columns == {"answer": ["4"]}


def test_conversational_prompts_render_with_the_chat_template_and_generation_prompt(tmp_path):
    from kuberlhf.models.tiny import build_char_tokenizer
    from kuberlhf.tasks.addition import ALPHABET, CHAT_TEMPLATE

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "23+45"}], "answer": "68"}) + "\n")
    data = load_prompts(path)
    assert data.conversational and data.columns == {"answer": ["68"]}
    tokenizer = build_char_tokenizer(ALPHABET)
    with pytest.raises(UserError, match=r"spec.policy.model: the data holds conversations .* no chat template"):
        encode_prompts(tokenizer, data.prompts)
    tokenizer.chat_template = CHAT_TEMPLATE
    texts, ids = encode_prompts(tokenizer, data.prompts)
    assert texts == ["23+45="]
    assert ids == encode_prompts(tokenizer, ["23+45="])[1]  # the string the model was trained on


def test_a_data_column_named_like_a_reward_argument_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion_ids": [1]}) + "\n")
    with pytest.raises(UserError, match=r"column 'completion_ids' would clash with the reward function's own"):
        load_prompts(path)


def test_values_keep_their_types_and_a_csv_from_excel_reads(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "2024-01-05", "answer": "007"}\n{"prompt": "p", "answer": 7}\n')
    assert [row for row in read_records(path).rows] == [{"prompt": "2024-01-05", "answer": "007"},
                                                        {"prompt": "p", "answer": 7}]
    excel = tmp_path / "excel.csv"
    excel.write_bytes("\ufeffprompt,answer\n1+1=,02\n".encode())  # Excel's "CSV UTF-8" starts with a BOM
    assert read_records(excel).rows == [{"prompt": "1+1=", "answer": "02"}]


def test_a_data_file_that_is_not_utf8_or_nests_too_deeply_names_its_line(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin.jsonl:2: not UTF-8 text \(byte 0xe9 at offset 15\)"):
        read_records(latin)
    deep = tmp_path / "deep.json"
    deep.write_text('[{"prompt": "x", "a": ' + "[" * 5000 + "]" * 5000 + "}]")
    with pytest.raises(UserError, match="deep.json: invalid JSON: nested too deeply"):
        read_records(deep)

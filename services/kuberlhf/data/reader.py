"""The one reader of every stage's data, online and offline: Hugging Face `datasets` for parquet, csv, saved
datasets and the Hub; JSON files parsed as written.

A source is a local file (`.jsonl`, `.json` holding an array of objects, `.parquet`, `.csv`), a directory written
by `datasets`' `save_to_disk`, a directory of data files laid out like a Hub dataset repository, or a Hub
dataset id (where the machine can reach the Hub). A file is one split; a dataset with several splits gives
the one named by `split`. `columns` renames columns to the names KubeRLHF reads (`{"prompt": "question"}`
reads the prompt from the column `question`).

Every row keeps where it came from, so a problem found later names it: `train.jsonl:17` (a JSON lines file),
`train.json[16]` (a JSON array), `train.parquet row 16` (parquet, csv: its values are read as text),
`org/name[train] row 16` (a dataset with splits). A column a row lacks (`datasets` fills it with null) is
absent from that row. JSON files are parsed with the `json` module: `datasets`' JSON loader guesses types
(a date-like string becomes a datetime, "007" beside 7 becomes a number), and a bad line is named exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError
from kuberlhf.safe_yaml import decode_utf8

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Records:
    """The rows of one source, as plain dicts, and where each came from."""

    source: str
    rows: list[dict[str, Any]]
    where: list[str]

    def __len__(self) -> int:
        return len(self.rows)


def read_records(source: str | Path, split: str = "train", subset: str | None = None,
                 columns: dict[str, str] | None = None, field: str = "spec.data.train") -> Records:
    """Every row of `source` (see the module docstring); `field` names the spec field in errors."""
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file():
        rows, places = _read_file(path, field)
    elif path.is_dir():
        rows, places = _rows_of(*_read_directory(path, split, subset, field))
    elif path.suffix in FILE_BUILDERS or source.startswith(("/", "./", "../", "~")) or not _HUB_ID.match(source):
        raise UserError(f"{field}: {source}: no such file or directory")
    else:
        rows, places = _rows_of(_read_hub(source, split, subset, field), f"{source}[{split}] row {{}}")
    rows = [{name: value for name, value in row.items() if value is not None} for row in rows]
    if not rows:
        raise UserError(f"{field}: {source}: no rows (the data is empty)")
    if columns:
        rows = _rename(rows, columns, source)
    return Records(source, rows, places)


def _rows_of(dataset: Any, place: str) -> tuple[list[dict[str, Any]], list[str]]:
    rows = dataset.to_list()
    return rows, [place.format(index) for index in range(len(rows))]


def _read_file(path: Path, field: str) -> tuple[list[dict[str, Any]], list[str]]:
    """JSON files are parsed as written (datasets' JSON loader guesses types: "2024-01-05" would become a date,
    "007" beside 7 a number); parquet and csv files go through datasets."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        return _read_json_array(path)
    import datasets

    builder = FILE_BUILDERS.get(path.suffix)
    if builder is None:
        raise UserError(f"{field}: {path}: unknown data file type {path.suffix!r}; use .jsonl, .json, .parquet, "
                        f".csv, a directory saved with datasets' save_to_disk, or a Hub dataset id")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    options = _csv_as_text(path) if builder == "csv" else {}
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # pyarrow and datasets raise many kinds for a file they cannot parse
        if "corresponds to no data" in str(err):  # datasets' words for a file without rows (a csv header alone)
            raise UserError(f"{path}: no rows (the file is empty)") from None
        raise UserError(f"{path}: cannot read this {path.suffix} file: {_gist(err)}") from None
    return _rows_of(dataset, f"{path} row {{}}")


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows, places = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, f"{path}:{number}")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as bad:
                raise UserError(f"{path}:{number}: invalid JSON: {bad.msg} (column {bad.colno})") from None
            except RecursionError:
                raise UserError(f"{path}:{number}: invalid JSON: nested too deeply") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            places.append(f"{path}:{number}")
    return rows, places


def _read_json_array(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        data = json.loads(decode_utf8(path.read_bytes(), str(path)))
    except json.JSONDecodeError as bad:
        raise UserError(f"{path}:{bad.lineno}: invalid JSON: {bad.msg} (column {bad.colno})") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of objects (or use .jsonl, one object per line)")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}[{index}]: expected an object with named fields, got {type(row).__name__}")
    return data, [f"{path}[{index}]" for index in range(len(data))]


def _csv_as_text(path: Path) -> dict[str, Any]:
    """A csv file holds text: read every column as a string (no guessed numbers, "NA" stays "NA")."""
    import csv

    import datasets

    with path.open(newline="", encoding="utf-8-sig") as handle:  # Excel writes a byte-order mark
        header = next(csv.reader(handle), [])
    if not header:
        return {}
    return {"features": datasets.Features({name: datasets.Value("string") for name in header}),
            "keep_default_na": False}


def _read_directory(path: Path, split: str, subset: str | None, field: str) -> tuple[Any, str]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    saved = any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
            if not isinstance(loaded, datasets.DatasetDict):
                return loaded, f"{path} row {{}}"
            if split not in loaded:
                raise UserError(f"{field}: {path} has no split {split!r} (splits: {', '.join(loaded)}); set the "
                                f"split in spec.data")
            return loaded[split], f"{path}[{split}] row {{}}"
        return datasets.load_dataset(str(path), subset, split=split), f"{path}[{split}] row {{}}"
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{field}: {path}: cannot read this directory as a dataset: {_gist(err)}") from None


def _read_hub(name: str, split: str, subset: str | None, field: str) -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        return datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # no network, no such dataset, no such split or subset, gated
        raise UserError(f"{field}: {name!r} is not a local file or directory, and loading it as a Hub dataset "
                        f"failed: {_gist(err)}") from None


def _rename(rows: list[dict[str, Any]], columns: dict[str, str], source: str) -> list[dict[str, Any]]:
    """Read field `name` from column `column` for every `name: column` of spec.data.columns."""
    present = {name for row in rows for name in row}
    for name, column in columns.items():
        if column not in present:
            raise UserError(f"spec.data.columns.{name}: {source} has no column {column!r} (columns: "
                            f"{', '.join(sorted(present))})")
        if name in present and name != column:
            raise UserError(f"spec.data.columns.{name}: {source} has a column {name!r} too; rename or remove one "
                            f"of {name!r} and {column!r}")
    renamed = {column: name for name, column in columns.items()}
    return [{renamed.get(key, key): value for key, value in row.items()} for row in rows]


def _gist(err: BaseException) -> str:
    """An error's own words in one line (datasets wraps the real cause)."""
    while err.__cause__ is not None and str(err).startswith("An error occurred while generating"):
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__

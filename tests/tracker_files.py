"""Reading back what the W&B tracker wrote, for the unit and integration tests.

W&B has no Python reader of an offline run: the run is one `.wandb` file of protobuf `Record`s (`wandb.proto`)
framed as a LevelDB log (a 7-byte header `:W&B`, 0xBEE1, version 0; then 32 KiB blocks of chunks, each with a
7-byte header: CRC-32, length, type FULL/FIRST/MIDDLE/LAST). `wandb sync` replays exactly this file, so what it
holds is what W&B would upload.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """One offline W&B run directory: its id, name, config, history ({step: metrics}) and exit code."""

    directory: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)
    exit_code: int | None = None  # None: the run never finished


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under `wandb_dir` (`<output.dir>/wandb`), oldest first (W&B's directory names start
    with the time)."""
    return [read_offline_run(path) for path in sorted(wandb_dir.glob("offline-run-*")) if not path.is_symlink()]


def read_offline_run(directory: Path, wait_s: float = 30.0) -> OfflineRun:
    """The run as its file holds it once finished. `run.finish()` returns before W&B's service process has
    flushed and closed the file (it is told so without waiting), so a file without its exit record yet is read
    again, for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    run = _read(directory)
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.2)
        run = _read(directory)
    return run


def _read(directory: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2

    run = OfflineRun(directory)
    (path,) = directory.glob("run-*.wandb")
    for data in _records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.project = record.run.run_id, record.run.display_name, record.run.project
            run.config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            row = run.history.setdefault(record.history.step.num, {})
            for item in record.history.item:
                path = [item.key] if item.key else list(item.nested_key)  # a table's fields are nested under its key
                if not path[0].startswith("_"):  # W&B's own: _step, _runtime, _timestamp
                    _put(row, path, json.loads(item.value_json))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def _put(row: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        row = row.setdefault(key, {})
    row[path[-1]] = value


def _records(data: bytes) -> Iterator[bytes]:
    """The whole records of the file (a tail still being written is left out)."""
    if len(data) < HEADER:
        return
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a W&B transaction log"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if kind == 0:  # zeros: the rest of the block is padding
            position += left
            continue
        if position + HEADER + length > len(data):
            return
        pending += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            yield pending
            pending = b""


def tracker_environment(monkeypatch: Any, home: Path) -> None:
    """No tracker reaches a network or the user's own settings: W&B offline and silent with its config and
    cache in `home`, MLflow on its local store in the output directory, experiment `kuberlhf`."""
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))

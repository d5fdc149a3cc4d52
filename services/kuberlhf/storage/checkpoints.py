"""Checkpoints and the final model in the job's storage, committed by the driver after every part is there.

A checkpoint `step-N/` holds one directory per part (`policy/`, `critic/`: each written by the processes that
own it, DeepSpeed shards from every rank; `engine/` for the offline stages) and `trainer_state.json`, written
last by the driver. That file is the commit: it holds the step, the trainer's own state (prompt position, KL
coefficient, monitor), the fingerprint of the spec and inputs, and the manifest of every part's files with
their sizes, which the driver has checked in the storage before writing it. A checkpoint without it, with
an empty or cut one, or with a file missing or of another size, is not complete: resume skips it (saying
so) and takes the one before. Object stores cannot rename, so the same protocol serves every storage: a
step written again is first uncommitted (its state file removed), then rewritten.

`final/` is committed the same way, by `final/kuberlhf-final.json` (a later stage of a chained job only
starts from a committed `final/`).

Pruning keeps the `keep` newest checkpoints, and also the newest one written before a stop (the monitor's
or the non-finite guard's checkpoint of a suspect policy must never push the last good one out).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from kuberlhf.errors import UserError
from kuberlhf.storage.store import Storage, StorageError

STATE_FILE = "trainer_state.json"
FINAL = "final"
FINAL_MARKER = "kuberlhf-final.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(name: str) -> int | None:
    found = _NAME.match(name)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: its name and its trainer_state.json."""

    name: str
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def stopped(self) -> bool:
        return bool(self.state.get("stopped"))

    def files_of(self, part: str) -> dict[str, int]:
        """The manifest of one part ({path inside the part: size})."""
        prefix = f"{part}/"
        return {name[len(prefix):]: size for name, size in self.state["files"].items() if name.startswith(prefix)}


class Checkpoints:
    """The checkpoints of one job (or stage) under a storage root."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def names(self) -> list[str]:
        """Every `step-N` in the storage, committed or not, in step order."""
        names = [n for n in self.storage.names() if step_of(n) is not None]
        return sorted(names, key=lambda n: step_of(n))

    def committed(self) -> list[str]:
        return [n for n in self.names() if self.storage.exists(f"{n}/{STATE_FILE}")]

    def begin(self, step: int) -> str:
        """Make room for step `step`'s parts: a copy from an earlier attempt is uncommitted first (its state
        file removed, then its files). Returns the key the parts go under."""
        name = checkpoint_name(step)
        self.storage.remove(f"{name}/{STATE_FILE}")
        self.storage.remove(name)
        return name

    def commit(self, step: int, files: dict[str, int], state: dict[str, Any], keep: int,
               stopped: str | None = None) -> Checkpoint:
        """Check that every file of the manifest is in the storage with its size, write the state file (the
        commit), then prune. `stopped`: the reason, for the checkpoint of a stop."""
        name = checkpoint_name(step)
        missing = verify_files(self.storage, name, files)
        if missing:
            raise StorageError(f"{self.storage.field}: checkpoint {name} is incomplete, not committed: {missing}")
        document = {**state, "step": step, "files": files, **({"stopped": stopped} if stopped else {})}
        self.storage.write_json(f"{name}/{STATE_FILE}", document)
        self.prune(keep)
        return Checkpoint(name, document)

    def load(self, name: str) -> Checkpoint:
        """A committed checkpoint, checked against its manifest; ValueError says what is wrong."""
        state = self.storage.read_json(f"{name}/{STATE_FILE}")
        if state is None:
            raise ValueError(f"{name} has no {STATE_FILE} (never committed)")
        if not isinstance(state, dict) or not isinstance(state.get("files"), dict) or "step" not in state:
            raise ValueError(f"{name}/{STATE_FILE} has no manifest (an older KubeRLHF wrote it, or it was edited)")
        missing = verify_files(self.storage, name, state["files"])
        if missing:
            raise ValueError(f"{name} is incomplete: {missing}")
        return Checkpoint(name, state)

    def newest(self, note: Callable[[str], None] | None = None) -> Checkpoint | None:
        """The newest complete checkpoint; those after it that fail the check are named in a note."""
        for name in reversed(self.names()):
            try:
                return self.load(name)
            except ValueError as problem:
                if note is not None:
                    note(f"skipping checkpoint {self.storage.describe(name)}: {problem}")
        return None

    def prune(self, keep: int) -> None:
        """Delete committed checkpoints beyond the `keep` newest, except the newest one not from a stop."""
        committed = self.committed()
        kept = set(committed[-keep:])
        for name in reversed(committed):
            if not self._stopped(name):
                kept.add(name)  # the newest good one: kept (already, or in addition)
                break
        for name in committed:
            if name not in kept:
                self.storage.remove(f"{name}/{STATE_FILE}")  # uncommitted first: never a complete-looking part
                self.storage.remove(name)

    def _stopped(self, name: str) -> bool:
        try:
            state = self.storage.read_json(f"{name}/{STATE_FILE}")
        except ValueError:
            return False
        return isinstance(state, dict) and bool(state.get("stopped"))


def verify_files(storage: Storage, key: str, files: dict[str, int]) -> str:
    """'' if every file of the manifest is under `key` with its size, else what is not."""
    problems = []
    for relative, size in sorted(files.items()):
        found = storage.size(f"{key}/{relative}")
        if found is None:
            problems.append(f"{relative} is missing")
        elif found != size:
            problems.append(f"{relative} has {found} bytes, not {size}")
    if problems:
        return ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
    return ""


# ------------------------------------------------------------------------------------------------ final/


def begin_final(outputs: Storage) -> str:
    """Make room for a new final model: the old one (if any) is uncommitted, then removed."""
    outputs.remove(f"{FINAL}/{FINAL_MARKER}")
    outputs.remove(FINAL)
    return FINAL


def commit_final(outputs: Storage, files: dict[str, int], about: dict[str, Any]) -> None:
    missing = verify_files(outputs, FINAL, files)
    if missing:
        raise StorageError(f"{outputs.field}: the final model in {outputs.describe(FINAL)} is incomplete: {missing}")
    outputs.write_json(f"{FINAL}/{FINAL_MARKER}", {**about, "files": files})


def final_committed(outputs: Storage) -> bool:
    """Whether `final/` holds a complete model (its marker is there and every file it lists)."""
    try:
        marker = outputs.read_json(f"{FINAL}/{FINAL_MARKER}")
    except ValueError:
        return False
    return isinstance(marker, dict) and isinstance(marker.get("files"), dict) and \
        not verify_files(outputs, FINAL, marker["files"])


def resume_point(checkpoints: Checkpoints, outputs: Storage, total_steps: int,
                 note: Callable[[str], None]) -> Checkpoint | None:
    """The checkpoint to resume from, or None for a fresh start; refuses to start over on top of a finished
    run (its final model would be replaced) or to resume past the requested number of steps."""
    newest = checkpoints.newest(note)
    if newest is None:
        if outputs.exists(f"{FINAL}/{FINAL_MARKER}") or outputs.exists(f"{FINAL}/config.json"):
            raise UserError(f"{outputs.describe(FINAL)} holds the model of an earlier run and "
                            f"{checkpoints.storage.url} has no checkpoint to resume from; choose another "
                            "spec.output.dir, or move the old run away")
        return None
    if newest.step > total_steps:
        raise UserError(f"spec.training.steps: the newest checkpoint {checkpoints.storage.describe(newest.name)} is "
                        f"at step {newest.step}, past the {total_steps} steps asked for; raise spec.training.steps "
                        "or choose another spec.checkpoint.dir")
    return newest


def set_aside(checkpoints: Checkpoints) -> str | None:
    """`kuberlhf run --no-resume`: a local checkpoint directory with checkpoints in it is renamed to
    `<dir>.set-aside-<n>` (the first free n), so the run starts over without losing anything; an object
    store cannot rename, so one holding checkpoints is refused. Returns the new name, or None."""
    storage = checkpoints.storage
    if not checkpoints.names():
        return None
    if not storage.is_local:
        raise UserError(f"{storage.field}: {storage.url} holds checkpoints that a run would resume from; "
                        "--no-resume cannot move them aside there: choose another location (nothing was changed)")
    from pathlib import Path

    directory = Path(storage.root)
    n = 1
    while (target := directory.with_name(f"{directory.name}.set-aside-{n}")).exists():
        n += 1
    directory.rename(target)
    return str(target)

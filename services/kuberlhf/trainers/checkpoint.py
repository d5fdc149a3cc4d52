"""Checkpoints of an online run: trained roles' weights and optimizer state, the trainer's position
(step, prompt sampler, KL coefficient). Written to a hidden partial directory and renamed into place, so a
crash mid-write never leaves a checkpoint that looks complete; the `keep` newest are kept.

Everything random in a step is derived from (seed, step) or restored from here, so a resumed run sees
the same batches in the same order as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def newest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer_state.json exists), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = sorted(p for p in directory.glob("step-*") if (p / STATE_FILE).is_file())
    return complete[-1] if complete else None


def partial_dir(directory: str | Path, step: int) -> Path:
    """Where the workers write a checkpoint before it is committed."""
    path = Path(directory) / f".{checkpoint_name(step)}.partial"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def commit_checkpoint(partial: Path, step: int, trainer_state: dict[str, Any], keep: int) -> Path:
    """Write the trainer state last, rename into place, then delete checkpoints beyond `keep`."""
    (partial / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    final = partial.parent / checkpoint_name(step)
    if final.exists():  # same step written by an earlier attempt: replace it only now that this one is whole
        shutil.rmtree(final)
    partial.rename(final)
    complete = sorted(p for p in partial.parent.glob("step-*") if (p / STATE_FILE).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old)
    return final


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())

"""Checkpoints of a run: trained roles' weights and optimizer state, the trainer's position (step, and for
online algorithms the prompt sampler and KL coefficient). Written to a hidden partial directory and renamed into place, so a
crash mid-write never leaves a checkpoint that looks complete; the `keep` newest are kept.

Everything random in a step is derived from (seed, step) or restored from here, so a resumed run sees
the same batches in the same order as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError

STATE_FILE = "trainer_state.json"


def find_resume_point(checkpoint_dir: str | Path, output_dir: str | Path, total_steps: int) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start; refuses to start over on top of a finished
    run (its final model would be replaced) or to resume past the requested number of steps."""
    newest = newest_checkpoint(checkpoint_dir)
    if newest is None:
        final = Path(output_dir) / "final"
        if final.exists():
            raise UserError(
                f"{final} holds the model of an earlier run and {checkpoint_dir} has no checkpoint to resume from; "
                "choose another spec.output.dir, or move the old run away"
            )
        return None
    step = read_trainer_state(newest)["step"]
    if step > total_steps:
        raise UserError(
            f"spec.training.steps: the newest checkpoint {newest} is at step {step}, past the {total_steps} steps "
            "asked for; raise spec.training.steps or choose another spec.checkpoint.dir"
        )
    return newest


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
    if final.exists():  # same step written by an earlier attempt: set it aside until this one is in place
        previous = partial.parent / f".{checkpoint_name(step)}.previous"
        if previous.exists():
            shutil.rmtree(previous)
        final.rename(previous)
        partial.rename(final)
        shutil.rmtree(previous)
    else:
        partial.rename(final)
    complete = sorted(p for p in partial.parent.glob("step-*") if (p / STATE_FILE).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old)
    return final


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


def set_aside_checkpoints(directory: str | Path) -> Path | None:
    """`kuberlhf run --no-resume`: rename a non-empty checkpoint directory to `<dir>.set-aside-<n>` (the first
    free n), so the run starts over without losing anything; returns the new name, or None if there was nothing."""
    directory = Path(directory)
    if not directory.is_dir() or not any(directory.iterdir()):
        return None
    n = 1
    while (target := directory.with_name(f"{directory.name}.set-aside-{n}")).exists():
        n += 1
    directory.rename(target)
    return target

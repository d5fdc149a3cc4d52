"""Weights & Biases (`spec.logging.reportTo: [wandb]`, the `wandb` extra): one W&B run per job (per stage of a
chained job), its files under `<output.dir>/wandb`, the spec as its config, each record's metrics at the
record's step and every samples.jsonl batch as a table.

Offline unless told otherwise, so a job never stalls on a login prompt or fails for want of a network:
`WANDB_MODE` is honoured as set; without it the run is online only where `WANDB_API_KEY` is set. An offline
run is uploaded later with `wandb sync <output.dir>/wandb/offline-run-*`.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError, first_line
from kuberlhf.telemetry.tracking import Tracking, cell, numeric_metrics, sample_columns

RUN_ID_FILE = "kuberlhf-run-id"  # in <output.dir>/wandb: the W&B run id a resumed job continues


class WandbTracker:
    """A W&B run that a resumed job continues (`resume="allow"` with the id kept in the output directory).
    Online, W&B keeps a resumed run's steps up to where it stopped and ignores the ones logged again after the
    checkpoint; offline, each attempt is a directory of its own with the same run id, and `wandb sync` uploads
    them in order into that one run."""

    def __init__(self, directory: Path, tracking: Tracking) -> None:
        import wandb

        files = directory / "wandb"  # wandb.init(dir=directory) writes its runs here
        files.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "kuberlhf", name=tracking.run_name,
                id=stable_run_id(files / RUN_ID_FILE), resume="allow", dir=str(directory), config=tracking.config,
                mode=wandb_mode(), reinit="create_new",  # never finishes a run the user's own script holds
                settings=wandb.Settings(console="off"),  # the job's output is in run.log already
            )
        except Exception as err:  # no network, a bad key, a project it may not write to
            raise UserError(f"spec.logging.reportTo: wandb could not start its run ({first_line(err)}); set "
                            f"WANDB_MODE=offline to keep it in {files} and `wandb sync` it later") from None
        # A resumed online run's history goes on from its last step: steps below it are dropped (quietly here)
        self.skip_below = self.run.step if self.run.resumed else 0

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if step >= self.skip_below:
            self.run.log(numeric_metrics(record), step=step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if step < self.skip_below or not samples:
            return
        columns = sample_columns(samples)
        table = self.wandb.Table(columns=columns, allow_mixed_types=True,
                                 data=[[cell(sample[c]) if c in sample else None for c in columns]
                                       for sample in samples])
        self.run.log({"samples": table}, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def wandb_mode() -> str:
    """`WANDB_MODE` where set; else online with `WANDB_API_KEY`, offline without. Always passed to `wandb.init`
    explicitly: W&B reads its environment once per process, so a later change would go unseen."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def stable_run_id(path: Path) -> str:
    """The run id kept in `path`, or a new random one written there: stable for one output directory, new for
    another (a job name alone would join unrelated runs that share it)."""
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.write_text(run_id + "\n")
    return run_id

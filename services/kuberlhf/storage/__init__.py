"""The job's storage: where checkpoints and the final model go, and how they are committed, verified,
locked and found again. See `store.py` (the roots and durable writes), `transfer.py` (who writes what, on
which node), `checkpoints.py` (commits, resume, pruning), `fingerprint.py` (verified resume), `lease.py`
(one writer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.storage.checkpoints import Checkpoints
from kuberlhf.storage.store import Storage

LOG_FILES = ("metrics.jsonl", "samples.jsonl", "summary.json")  # copied to output.uri (the driver's own files)
LOG_DIRS = ("tensorboard", "wandb", "mlflow")  # experiment trackers' files (telemetry/trackers.py), copied too
# What a resumed job on a new machine needs back to continue its trackers' runs: the run ids (RUN_ID_FILE of
# telemetry/wandb_tracker.py and mlflow_tracker.py) and the local MLflow store, fetched like the log files.
# TensorBoard and offline W&B need nothing back: they start new files beside the old ones.
TRACKER_STATE = ("wandb/kuberlhf-run-id", "mlflow/kuberlhf-run-id", "mlflow/mlflow.db")


@dataclass(frozen=True)
class JobStorage:
    """`outputs`: where `final/` goes (output.uri, else output.dir); `checkpoints`: checkpoint.dir if given,
    else `<outputs>/checkpoints`; `local`: the driver's output directory (logs, metrics)."""

    outputs: Storage
    checkpoints: Checkpoints
    local: Path

    @property
    def remote(self) -> bool:
        """Whether the outputs live apart from the driver's output directory (output.uri)."""
        return not (self.outputs.is_local and Path(self.outputs.root) == self.local.resolve())

    def roots(self) -> list[Storage]:
        return [self.outputs, self.checkpoints.storage]

    def copy_logs(self) -> None:
        """Copy the driver's log files to output.uri (a new cluster finds the history there)."""
        if self.remote:
            for name in LOG_FILES:
                if (self.local / name).is_file():
                    self.outputs.put_file(self.local / name, name)
            for directory in LOG_DIRS:
                for path in sorted((self.local / directory).rglob("*")):
                    if path.is_file():
                        self.outputs.put_file(path, path.relative_to(self.local).as_posix())

    def fetch_logs(self) -> None:
        """Before a resume on a machine whose output directory is gone: the log files from output.uri."""
        if self.remote:
            for name in LOG_FILES + TRACKER_STATE:
                if not (self.local / name).exists() and self.outputs.exists(name):
                    self.outputs.get_file(name, self.local / name)


def job_storage(job: Any) -> JobStorage:
    spec = job.spec
    local = Path(job.output_dir)
    if spec.output.uri:
        outputs = Storage(spec.output.uri, "spec.output.uri")
    else:
        outputs = Storage(local, "spec.output.dir")
    if spec.checkpoint.dir:
        checkpoints = Storage(spec.checkpoint.dir, "spec.checkpoint.dir")
    else:
        checkpoints = outputs.child("checkpoints")
    return JobStorage(outputs, Checkpoints(checkpoints), local)

"""Experiment trackers (TRL's `report_to`, `spec.logging.reportTo`): every record a run writes to metrics.jsonl
also goes to each tracker the job names, on the driver's node, beside metrics.jsonl. The online trainer writes
its metrics log on the driver; an offline stage's rank 0 sends its records to the driver's `DriverFiles`
actor, which keeps the same log: so both feed the trackers from one place.

TensorBoard lives here; W&B and MLflow (optional extras) in `wandb_tracker.py` and `mlflow_tracker.py`,
imported only when a job names them; what they share is in `tracking.py`.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Sequence

from kuberlhf.errors import UserError
from kuberlhf.telemetry.tracking import Tracker, Tracking, cell, numeric_metrics, sample_columns

# How to install each tracker: the one-line error of a job that names a missing one.
INSTALL = {
    "tensorboard": "pip install tensorboard, or the kuberlhf[runtime] extra",
    "wandb": "pip install 'kuberlhf[wandb]'",
    "mlflow": "pip install 'kuberlhf[mlflow]'",
}


def check_installed(report_to: Sequence[str]) -> None:
    """Every tracker `report_to` names can be imported here (the preflight, and `kuberlhf validate`)."""
    for name in report_to:
        if any(find_spec(module) is None for module in required_modules(name)):
            raise UserError(f"spec.logging.reportTo: {name} is not installed here ({INSTALL[name]})")


def required_modules(name: str) -> tuple[str, ...]:
    """What a tracker imports. MLflow's local store (no `MLFLOW_TRACKING_URI`) is SQLite, which MLflow reaches
    through SQLAlchemy and Alembic: the `mlflow` extra installs them, mlflow-skinny alone does not."""
    if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
        return ("mlflow", "sqlalchemy", "alembic")
    return (name,)


def open_trackers(directory: Path, resume_step: int, tracking: Tracking) -> list[Tracker]:
    """The trackers `tracking.report_to` names, each writing to a directory of its name under `directory`
    (a W&B or MLflow server instead, where the environment names one)."""
    check_installed(tracking.report_to)
    opened: list[Tracker] = []
    try:
        for name in tracking.report_to:
            opened.append(_open(name, directory, resume_step, tracking))
    except BaseException:
        for tracker in opened:  # a later one failed to start: end the runs already begun
            tracker.close(failed=True)
        raise
    return opened


def _open(name: str, directory: Path, resume_step: int, tracking: Tracking) -> Tracker:
    if name == "wandb":
        from kuberlhf.telemetry.wandb_tracker import WandbTracker

        return WandbTracker(directory, tracking)
    if name == "mlflow":
        from kuberlhf.telemetry.mlflow_tracker import MlflowTracker

        return MlflowTracker(directory / "mlflow", tracking)
    return TensorBoardTracker(directory / "tensorboard", resume_step)


class TensorBoardTracker:
    """Each numeric metric of a record as a TensorBoard scalar at the record's step, flushed at once (a crash
    loses no step); a step's samples as a markdown table (the TEXT tab). On resume (`resume_step` > 0)
    TensorBoard purges the events after that step, which the resumed run writes again."""

    def __init__(self, directory: Path, resume_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(f"spec.logging.reportTo: tensorboard is not installed here "
                            f"({INSTALL['tensorboard']})") from None
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=resume_step + 1 if resume_step else None)

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in numeric_metrics(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self.writer.add_text("samples", markdown_table(samples), step)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


def markdown_table(samples: list[dict[str, Any]]) -> str:
    """Samples as a markdown table; a cell's line breaks become `<br>` and its `|` is escaped."""
    columns = sample_columns(samples)

    def text(value: Any) -> str:
        shown = cell(value)
        shown = f"{shown:.4g}" if isinstance(shown, float) else shown
        return shown.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows += ["| " + " | ".join(text(sample.get(column, "")) for column in columns) + " |" for sample in samples]
    return "\n".join(rows)

"""What every experiment tracker (`spec.logging.reportTo`) shares: the run it reports (`Tracking`), the
interface it implements (`Tracker`), and how a record's metrics and a step's samples become what trackers
plot and show. The trackers themselves are `trackers.py` (TensorBoard, and which to open),
`wandb_tracker.py` and `mlflow_tracker.py`; they import this module, never each other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Tracking:
    """What the trackers need besides the records: the names in `spec.logging.reportTo`, the run's name (the
    job's, `<job>/<stage>` for a stage of a chained job) and its configuration (the spec). Plain data, so it
    travels to the driver's `DriverFiles` actor with the offline stages' config."""

    report_to: tuple[str, ...] = ()
    run_name: str = "kuberlhf"
    config: dict[str, Any] = field(default_factory=dict)


# Sections of environment variables: their values may be credentials, never published to a tracker.
ENVIRONMENT_KEYS = frozenset({"env", "envVars", "secretEnv"})


def tracking_of(job: Any) -> Tracking:
    """The job's `Tracking`. The config leaves out `spec.cluster` (where the pods run says nothing about the
    training) and every map of environment variables (a token or a URL with a password may be among them)."""
    from kuberlhf.telemetry.job_status import STAGE_LABEL

    stage = job.metadata.labels.get(STAGE_LABEL)
    name = f"{job.metadata.name}/{stage}" if stage else job.metadata.name
    config = without_environment(job.spec.model_dump(mode="json", by_alias=True, exclude={"cluster"}))
    return Tracking(tuple(job.spec.logging.report_to), name, config)


def without_environment(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without its environment-variable sections (`ENVIRONMENT_KEYS`), at any depth."""
    return {key: without_environment(value) if isinstance(value, dict) else value
            for key, value in config.items() if key not in ENVIRONMENT_KEYS}


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (its `step` and its metrics)."""

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """The samples.jsonl records of one step (prompt, completion, reward, logged columns)."""

    def close(self, failed: bool) -> None:
        """End the run (finished, or failed when the job raised)."""


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The record's metrics a tracker can plot: finite numbers (not booleans), without `step`."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def sample_columns(samples: list[dict[str, Any]]) -> list[str]:
    """The columns of a step's samples, in the order samples.jsonl has them (without `step`)."""
    columns: dict[str, None] = {}
    for sample in samples:
        columns.update((key, None) for key in sample if key != "step")
    return list(columns)


def cell(value: Any) -> str | float:
    """A table cell: numbers stay numbers, text stays text, anything else (a conversation's messages) is JSON."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)

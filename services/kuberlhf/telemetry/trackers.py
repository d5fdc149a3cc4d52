"""Experiment trackers (TRL's `report_to`, `spec.logging.reportTo`): every record a run writes to metrics.jsonl
also goes to each tracker the job names, on the driver's node, beside metrics.jsonl. The online trainer writes
its metrics log on the driver; an offline stage's rank 0 sends its records to the driver's `DriverFiles`
actor, which keeps the same log: so both feed the trackers from one place.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, Sequence

from kuberlhf.errors import UserError


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...


class TensorBoardTracker:
    """Each numeric metric of a record as a TensorBoard scalar at the record's step, flushed at once (a crash
    loses no step). On resume (`resume_step` > 0) TensorBoard purges the events after that step, which the
    resumed run writes again."""

    def __init__(self, directory: Path, resume_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("spec.logging.reportTo: tensorboard is not installed here (pip install tensorboard, "
                            "or the kuberlhf[runtime] extra)") from None
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=resume_step + 1 if resume_step else None)

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()


TRACKERS = {"tensorboard": TensorBoardTracker}


def open_trackers(directory: Path, resume_step: int, report_to: Sequence[str]) -> list[Tracker]:
    """The trackers `report_to` names, each writing to a directory of its name under `directory`."""
    return [TRACKERS[name](directory / name, resume_step) for name in report_to]

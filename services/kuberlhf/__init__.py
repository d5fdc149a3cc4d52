"""KubeRLHF: RLHF jobs on Ray, locally or on Kubernetes through KubeRay.

The Python API is the command line's: `kuberlhf.run(job)` runs a job as `kuberlhf run` does and returns its
summary; `kuberlhf.load_job(path, overrides)` reads and checks a job file. Both raise `kuberlhf.UserError` with
one line per problem for a mistake in the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuberlhf.errors import UserError

if TYPE_CHECKING:
    from kuberlhf.spec import RLHFJob

__version__ = "0.1.0"
__all__ = ["UserError", "load_job", "run"]


def load_job(job: str | Path | dict[str, Any], *overrides: str) -> RLHFJob:
    """An RLHFJob from a YAML file or a dict shaped like one, after `overrides` (`spec.training.steps=50`, as
    `--set` takes them); raises UserError naming every field that is wrong."""
    import copy

    from kuberlhf import jobfile

    if isinstance(job, dict):
        raw = copy.deepcopy(job)  # the caller's dict stays as it was
        for override in overrides:
            jobfile.apply_override(raw, override)
        return jobfile.validate_job(raw, source="job")
    return jobfile.load_job(job, list(overrides))


def run(job: str | Path | dict[str, Any] | RLHFJob, *overrides: str, dashboard: bool = False,
        resume: bool = True) -> dict[str, Any]:
    """Run a job in this process as `kuberlhf run` does: on the Ray cluster at $RAY_ADDRESS, else an embedded
    Ray; a rerun resumes from the newest checkpoint unless `resume` is False. Returns the run's summary (what
    summary.json holds: status, steps, final_model, metrics_file, eval, ...)."""
    from kuberlhf.launcher import run_job
    from kuberlhf.spec import RLHFJob

    if not isinstance(job, RLHFJob):
        job = load_job(job, *overrides)
    elif overrides:
        raise UserError("kuberlhf.run: overrides apply to a job file or dict, not to an RLHFJob object")
    return run_job(job, dashboard=dashboard, resume=resume)

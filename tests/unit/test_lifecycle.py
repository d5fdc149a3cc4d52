"""The run lifecycle's restart loop, shared by online and offline stages: failures of the workers are retried
from the newest checkpoint up to training.maxRestarts, a user's mistake never is."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberlhf.errors import UserError, WorkersUnhealthy
from kuberlhf.jobfile import load_job
from kuberlhf.trainers.lifecycle import run_with_restarts

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "grpo-tiny.yaml"


def scripted(outcomes: list[BaseException | str]):
    """An attempt that raises or returns the next outcome, and records what it resumed from."""
    seen = []

    def attempt(resume_from):
        seen.append(resume_from)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return attempt, seen


def test_failed_workers_are_replaced_until_the_attempt_succeeds(tmp_path):
    job = load_job(EXAMPLE, [f"spec.output.dir={tmp_path}", "spec.training.maxRestarts=2"])
    notes: list[str] = []
    attempt, seen = scripted([WorkersUnhealthy("hung"), WorkersUnhealthy("hung again"), "done"])
    result, restarts = run_with_restarts(job, attempt, (WorkersUnhealthy,), "a worker", 40, notes.append,
                                         describe=lambda err: "workers replaced")
    assert (result, restarts, seen) == ("done", 2, [None, None, None])  # no checkpoint yet: from the start
    assert notes == ["workers replaced (hung); restart 1/2: new workers from the start",
                     "workers replaced (hung again); restart 2/2: new workers from the start"]


def test_past_max_restarts_the_job_fails_naming_the_reason(tmp_path):
    job = load_job(EXAMPLE, [f"spec.output.dir={tmp_path}", "spec.training.maxRestarts=1"])
    attempt, _ = scripted([WorkersUnhealthy("one"), WorkersUnhealthy("two")])
    with pytest.raises(UserError, match=r"training.maxRestarts: a worker died again after 1 restarts \(two\)"):
        run_with_restarts(job, attempt, (WorkersUnhealthy,), "a worker", 40, lambda _: None)


def test_a_user_error_behind_a_failure_is_raised_at_once_and_on_failure_may_raise_first(tmp_path):
    job = load_job(EXAMPLE, [f"spec.output.dir={tmp_path}"])
    failure = WorkersUnhealthy("wrapped")
    failure.__cause__ = UserError("spec.reward.function: raised ValueError")
    attempt, seen = scripted([failure, "never"])
    with pytest.raises(UserError, match="spec.reward.function"):
        run_with_restarts(job, attempt, (WorkersUnhealthy,), "a worker", 40, lambda _: None)
    assert len(seen) == 1

    def stop_requested(err: BaseException) -> None:
        raise KeyboardInterrupt("stopped")

    attempt, _ = scripted([WorkersUnhealthy("x"), "never"])
    with pytest.raises(KeyboardInterrupt):
        run_with_restarts(job, attempt, (WorkersUnhealthy,), "a worker", 40, lambda _: None,
                          on_failure=stop_requested)

"""User-facing errors: what is wrong, where, and how to fix it. The CLI prints these without a traceback."""

import re


class UserError(Exception):
    """A mistake in the user's input (spec, data, reward function, environment) rather than a bug."""


class JobStopped(UserError):
    """The job stopped itself on purpose (the reward-hacking monitor with `action: stop`); the message says
    why and where the checkpoint is. Printed like a user error: no traceback, a non-zero exit."""


class Interrupted(UserError):
    """The job was asked to stop (SIGTERM) and did, after a checkpoint; running it again continues."""


class WorkersUnhealthy(RuntimeError):
    """The workers cannot go on as they are (a call that never answered, weights that did not arrive): the
    launcher replaces them all from the newest checkpoint, as for a worker that died (`training.maxRestarts`)."""


class WorkerTimedOut(WorkersUnhealthy):
    """A worker call (or the collective inside it) did not answer within `training.callTimeoutSeconds`."""


class WeightSyncError(WorkersUnhealthy):
    """The rollout engines do not hold the policy's weights after a sync (the probe or the version says so)."""


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError behind a Ray error (a task or actor constructor that raised one, or a Ray Train worker),
    if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, UserError):
            return UserError(str(cause.args[0]) if cause.args else str(cause))
        if type(current) is UserError:
            return current
        for failure in (getattr(current, "worker_failures", None) or {}).values():  # Ray Train's WorkerGroupError
            found = user_error_in(failure)
            if found is not None:
                return found
        current = cause if isinstance(cause, BaseException) else (
            getattr(current, "creation_task_error", None) or current.__cause__
        )
    return _user_error_in_text(str(error))


# An actor whose constructor raised is reported (ActorDiedError) with the constructor's traceback as text only.
_RAISED_IN_TEXT = re.compile(r"^kuberlhf\.errors\.(?:UserError|JobStopped|Interrupted): (.*?)(?:\n\s*\n|\Z)",
                             re.MULTILINE | re.DOTALL)


def _user_error_in_text(text: str) -> UserError | None:
    found = _RAISED_IN_TEXT.search(text)
    return UserError(found.group(1).strip()) if found else None


def first_line(err: BaseException) -> str:
    """An error's gist in one line, without a traceback: a Ray Train failure's is its first failed rank's last
    unindented line (e.g. `The actor is dead because its worker process has died. ...`)."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        rank, failure = min(failures.items(), key=lambda item: item[0])
        lines = [line for line in str(failure).splitlines() if line.strip() and not line[0].isspace()]
        return f"rank {rank}: {lines[-1][:300] if lines else type(failure).__name__}"
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def describe_error(err: BaseException) -> str:
    """An unexpected error in one line: the exception a Ray task or actor raised (not Ray's wrapper), its type
    and the first line of its message."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return describe_error(cause)
    return f"{type(err).__name__}: {first_line(err)}"


def restart_or_fail(err: BaseException, restarts: int, max_restarts: int, checkpoint_dir: str, what: str) -> int:
    """After a worker died (`err`): the restart count to go on with, or the error to stop with. A user error
    behind it is raised as is (a restart would fail the same way); past `max_restarts` the job fails with the
    reason and where its newest checkpoint is."""
    if (cause := user_error_in(err)) is not None:
        raise cause from None
    if restarts + 1 > max_restarts:
        raise UserError(f"training.maxRestarts: {what} died again after {restarts} restarts ({first_line(err)}); "
                        f"the newest checkpoint is in {checkpoint_dir}") from None
    return restarts + 1

"""A run's life, for every stage (online and offline): find the checkpoint to resume from (verified against the
spec), run the workers and replace them from the newest checkpoint when they fail (`run_with_restarts`), save
checkpoints and the final model from the workers that own them, commit them, and stop cleanly on SIGTERM.

The driver never writes a trained role's files itself: each rank puts its own part into the job's storage
(`storage/transfer.py`) and returns the manifest; the driver checks the manifest against the storage and
commits (`storage/checkpoints.py`).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from kuberlhf.errors import first_line, restart_or_fail
from kuberlhf.storage import JobStorage, job_storage
from kuberlhf.storage.checkpoints import (
    FINAL,
    FINAL_MARKER,
    Checkpoint,
    begin_final,
    commit_final,
    resume_point,
)
from kuberlhf.storage.fingerprint import check_resume, fingerprint
from kuberlhf.storage.transfer import StorageTarget, open_target


def find_resume(job: Any, total_steps: int, note: Callable[[str], None]) -> Checkpoint | None:
    """The newest complete checkpoint of the job, checked against the spec (a changed setting is refused
    unless `checkpoint.resumeChanged` names it); None for a fresh start."""
    storage = job_storage(job)
    found = resume_point(storage.checkpoints, storage.outputs, total_steps, note)
    if found is not None:
        accepted = check_resume(found.state.get("fingerprint"), fingerprint(job.spec),
                                job.spec.checkpoint.resume_changed, storage.checkpoints.storage.describe(found.name))
        if accepted:
            note("resuming with changed settings: " + "; ".join(
                f"{field}: {before} -> {after}" for field, (before, after) in accepted.items()))
        storage.fetch_logs()
    return found


Result = TypeVar("Result")


def run_with_restarts(job: Any, attempt: Callable[[Checkpoint | None], Result], failures: tuple[type, ...],
                      what: str, total_steps: int, note: Callable[[str], None],
                      resume_from: Checkpoint | None = None, on_failure: Callable[[BaseException], None] | None = None,
                      describe: Callable[[BaseException], str] | None = None) -> tuple[Result, int]:
    """`attempt(resume_from)` with fresh workers until it returns; when its workers fail (`failures`: died, hung,
    lost a sync) the next attempt starts from the newest complete checkpoint, at most `training.maxRestarts`
    times, and then the job fails with the reason. A user's mistake behind the failure is raised as itself (a
    restart would fail the same way); `on_failure` may raise something else first (a stop that was asked for).
    `describe` words the failure in the log (default: "<what> failed"). Returns the result and the restarts it
    took."""
    restarts, limit = 0, job.spec.training.max_restarts
    while True:
        try:
            return attempt(resume_from), restarts
        except failures as err:
            if on_failure is not None:
                on_failure(err)
            restarts = restart_or_fail(err, restarts, limit, job_storage(job).checkpoints.storage.url, what)
            resume_from = find_resume(job, total_steps, note)
            happened = describe(err) if describe is not None else f"{what} failed"
            note(f"{happened} ({first_line(err)}); restart {restarts}/{limit}: new workers from "
                 f"{resume_from.name if resume_from else 'the start'}")


@dataclass(frozen=True)
class RunStorage:
    """The job's storage as a running job uses it: the roots, and the targets its workers write to."""

    storage: JobStorage
    checkpoints: StorageTarget
    outputs: StorageTarget
    fingerprint: dict[str, Any]
    keep: int


def open_run_storage(job: Any) -> RunStorage:
    """Check that the storage is writable and start the targets (probe, relay); Ray must be up."""
    storage = job_storage(job)
    for root in storage.roots():
        root.check_writable()
    return RunStorage(storage, open_target(storage.checkpoints.storage), open_target(storage.outputs),
                      fingerprint(job.spec), job.spec.checkpoint.keep)


def save_checkpoint(run: RunStorage, groups: dict[str, Any], step: int, state: dict[str, Any],
                    stopped: str | None = None) -> Checkpoint:
    """Every rank of each trained role ({part name: worker group}) writes its part; then the commit."""
    import ray

    checkpoints = run.storage.checkpoints
    key = checkpoints.begin(step)
    pending = {part: group.call("save_state", run.checkpoints, f"{key}/{part}").refs for part, group in groups.items()}
    files = {f"{part}/{name}": size for part, refs in pending.items() for manifest in ray.get(refs)
             for name, size in manifest.items()}
    saved = checkpoints.commit(step, files, {**state, "fingerprint": run.fingerprint}, run.keep, stopped)
    run.storage.copy_logs()
    return saved


def restore_checkpoint(run: RunStorage, groups: dict[str, Any], checkpoint: Checkpoint) -> None:
    import ray

    ray.get([ref for part, group in groups.items()
             for ref in group.call("load_state", run.checkpoints, f"{checkpoint.name}/{part}",
                                   checkpoint.files_of(part)).refs])


def save_final_model(run: RunStorage, policy: Any, merge_lora: bool, about: dict[str, Any]) -> str:
    """`final/`: written by the policy's rank 0 into the storage, committed by its marker; with output.uri a
    copy also lands in the local output directory (a later stage reads it there)."""
    import ray

    outputs = run.storage.outputs
    begin_final(outputs)
    files: dict[str, int] = {}
    for manifest in ray.get(policy.call("save_pretrained", run.outputs, FINAL, merge_lora).refs):
        files.update(manifest)
    commit_final(outputs, files, about)
    run.storage.copy_logs()
    if not run.storage.remote:
        return str(run.storage.local / FINAL)
    return download_final(run.storage, files)


def local_final(storage: JobStorage) -> str:
    """The committed final model in the driver's output directory (downloaded from output.uri if need be)."""
    if not storage.remote:
        return str(storage.local / FINAL)
    marker = storage.outputs.read_json(f"{FINAL}/{FINAL_MARKER}")
    if (storage.local / FINAL / FINAL_MARKER).is_file():
        return str(storage.local / FINAL)
    return download_final(storage, marker["files"])


def download_final(storage: JobStorage, files: dict[str, int]) -> str:
    import shutil

    local, partial = storage.local / FINAL, storage.local / f".{FINAL}.download"
    shutil.rmtree(partial, ignore_errors=True)
    storage.outputs.download_tree(FINAL, files, partial)
    storage.outputs.get_file(f"{FINAL}/{FINAL_MARKER}", partial / FINAL_MARKER)
    shutil.rmtree(local, ignore_errors=True)
    partial.rename(local)
    return str(local)


class StopRequest:
    """SIGTERM (KubeRay deleting or suspending the job, a preempted node, `kill`): noted, and acted on at the
    next step boundary, where the run checkpoints and exits so that a retry or a rerun continues from there."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: Any = None
        self._event = threading.Event()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _note(self, signum: int, frame: Any) -> None:
        self.signal = signum
        self._event.set()

    def tell(self, callback: Callable[[], Any]) -> None:
        """Call `callback` from a helper thread once a stop is requested (a signal handler must not call Ray)."""
        def wait() -> None:
            self._event.wait()
            callback()
        threading.Thread(target=wait, name="kuberlhf-stop", daemon=True).start()

    @property
    def requested(self) -> bool:
        return self.signal is not None


"""What a run leaves on disk and on the terminal: metrics.jsonl (one line per step), a progress bar (rich,
in a terminal) or a plain line per step (in logs), and the end-of-run summary."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kuberlhf.telemetry.console import console as run_console
from kuberlhf.telemetry.trackers import open_trackers
from kuberlhf.telemetry.tracking import Tracker, Tracking

HEADLINE = ("reward/mean", "kl/sequence", "response_length/mean", "time/step")
OFFLINE_HEADLINE = ("loss", "accuracy", "margin", "time/step")


class PhaseTimer:
    """Wall time of each named phase of a step: `with timer("generation"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[f"time/{phase}"] = self.seconds.get(f"time/{phase}", 0.0) + time.perf_counter() - started


class StepLog:
    """A JSON-lines file of records tagged with their step (metrics.jsonl, samples.jsonl); on resume, keeps
    the lines up to the resumed step (a line cut short by a crash or a full disk is dropped) and replaces the
    file in one rename. Closing it (or leaving its `with` block) ends its trackers' runs; the file itself is
    opened per write and needs no closing."""

    def __init__(self, path: Path, resume_step: int = 0, sort_keys: bool = True, tracking: Tracking | None = None
                 ) -> None:
        """`tracking`: the experiment trackers (telemetry/trackers.py) that get every record too, each in a
        directory of its name beside the file."""
        self.path, self.sort_keys = path, sort_keys
        path.parent.mkdir(parents=True, exist_ok=True)
        self.trackers: list[Tracker] = open_trackers(path.parent, resume_step, tracking) if tracking else []
        kept = []
        if resume_step and path.exists():
            kept = [line for line, record in read_records(path) if record.get("step", 0) <= resume_step]
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text("".join(line + "\n" for line in kept))
        partial.replace(path)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=self.sort_keys, default=_plain) + "\n")
        for tracker in self.trackers:
            tracker.log(record)

    def track_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """A step's samples (written to samples.jsonl by a log of their own) for this log's trackers too: one
        run per tracker holds both the metrics and the samples."""
        for tracker in self.trackers:
            tracker.log_samples(step, samples)

    def close(self, failed: bool = False) -> None:
        """End the trackers' runs, as failed if the job raised; later records go to the file only."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(failed)

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=kind is not None)


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each whole JSON line of a step log; a cut or garbled line is skipped."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append((line, record))
    return found


class DriverFiles:
    """A Ray actor on the driver's node that writes the driver's own files (metrics.jsonl, eval.json) for a
    process that runs elsewhere (an offline stage's rank 0, on another pod)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.logs: dict[str, StepLog] = {}
        self.stopping = False  # the driver got SIGTERM: the workers checkpoint and stop at the step's end

    def request_stop(self) -> None:
        self.stopping = True

    def stop_requested(self) -> bool:
        return self.stopping

    def open_log(self, name: str, resume_step: int, tracking: Tracking | None = None) -> None:
        """(Re)open a log: a restarted stage's rank 0 opens it again, which ends the earlier attempt's runs."""
        if name in self.logs:
            self.logs[name].close(failed=True)
        self.logs[name] = StepLog(self.directory / name, resume_step, tracking=tracking)

    def close_logs(self, failed: bool) -> None:
        """The stage is over: end every log's tracker runs (a record still on its way goes to the file only)."""
        for log in self.logs.values():
            log.close(failed)

    def write(self, name: str, record: dict[str, Any]) -> None:
        self.logs[name].write(record)

    def wait(self) -> None:
        """Returns once every call sent before it has run."""

    def write_text(self, name: str, text: str) -> None:
        (self.directory / name).write_text(text)


@contextmanager
def closing_logs(files: Any) -> Iterator[None]:
    """A `DriverFiles` actor's logs are closed when the block ends (their trackers' runs finished, or failed if
    the block raised): the offline stages' way of closing what rank 0 opened on the driver."""
    import ray

    try:
        yield
    except BaseException:
        ray.get(files.close_logs.remote(failed=True))
        raise
    ray.get(files.close_logs.remote(failed=False))


class RemoteStepLog:
    """A StepLog kept by a DriverFiles actor (same `write`)."""

    def __init__(self, files: Any, name: str, resume_step: int, tracking: Tracking | None = None) -> None:
        import ray

        self.files, self.name = files, name
        ray.get(files.open_log.remote(name, resume_step, tracking))

    def write(self, record: dict[str, Any]) -> None:
        """Sent without waiting: an actor runs one caller's calls in order, and the next call that is waited
        for (the final eval.json) comes after every record."""
        self.files.write.remote(self.name, json.loads(json.dumps(record, default=_plain)))

    def flush(self) -> None:
        import ray

        ray.get(self.files.wait.remote())


def _plain(value: Any) -> Any:
    """JSON for what a reward function may log: numpy and torch scalars as numbers, anything else as text."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def sample_records(step: int, rollout: Any, scores: Any, count: int) -> list[dict[str, Any]]:
    """The first `count` samples of a step's rollout for samples.jsonl: prompt (text, or the messages of a
    conversation), completion, reward, and the columns the reward function logged with `log_extra`."""
    prompts = rollout.prompt_messages if rollout.prompt_messages is not None else rollout.prompts
    log = rollout.reward_log
    logged = {name: log.column(name) for name in log.columns} if log is not None else {}
    records = []
    for row in range(min(count, len(rollout))):
        record = {"step": step, "prompt": prompts[row], "completion": rollout.completions[row],
                  "reward": float(scores[row])}
        record.update({name: values[row] for name, values in logged.items()})
        records.append(record)
    return records


class StepDisplay:
    """A rich progress bar in a terminal; a plain line per step otherwise."""

    def __init__(self, total_steps: int, first_step: int, console: Console | None = None) -> None:
        self.console = console or run_console()
        self.interactive = self.console.is_terminal
        self.total = total_steps
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console,
            redirect_stdout=False, redirect_stderr=False,  # what libraries print belongs in run.log, not here
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, stats="")

    def __enter__(self) -> StepDisplay:
        if self.interactive:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.interactive:
            self.progress.stop()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        stats = (f"reward {metrics.get('reward/mean', 0):.3f}  kl {metrics.get('kl/sequence', 0):.4f}  "
                 f"len {metrics.get('response_length/mean', 0):.1f}  {metrics.get('time/step', 0):.2f}s/step")
        if self.interactive:
            self.progress.update(self.task, completed=step, stats=stats)
        else:
            self.note(f"step {step}/{self.total}  {stats}")

    def note(self, message: str) -> None:
        self.console.print(message, soft_wrap=True, markup=False, highlight=False)  # one line per note in logs


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """A short table: where the model went and the first/last values of the headline metrics."""
    console = console or run_console()
    table = Table(title=f"RLHFJob {summary['job']} ({summary['algorithm']}) {summary['status']}")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("steps", "wall_seconds", "final_model", "metrics_file"):
        table.add_row(key, str(summary[key]))
    for key, (first, last) in summary.get("headline", {}).items():
        table.add_row(key, f"{first:.4g} -> {last:.4g}")
    for key, value in summary.get("eval", {}).items():
        table.add_row(key, f"{value:.4g}")
    console.print(table)

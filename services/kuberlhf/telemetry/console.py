"""The terminal of a run: KubeRLHF's own lines, and nothing else unless asked (`kuberlhf run --verbose`).

During `kuberlhf run` (`quiet_run`), everything a library writes on the driver (warnings, log records, native
code's output on file descriptors 1 and 2) and every line a Ray worker prints goes to `<output.dir>/run.log`.
The terminal gets progress, notes and the summary (`console()`), and the lines worker processes mark as ours
(`say`, and the `kuberlhf` loggers' warnings), without Ray's colour codes. A worker's line is written to
run.log prefixed with its actor and process (`(RolloutWorker pid=123)`), so the log says who said what.

Ray forwards worker output to the driver through a dispatcher in `ray._private.ray_logging` (Ray is pinned);
`route_worker_output` replaces Ray's printer there with ours.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from rich.console import Console

MARK = "[kuberlhf] "  # a worker's line that belongs on the user's terminal
RAY_PRINTER = "ray_print_logs"  # the name Ray's own printer has in its dispatcher
OUR_PRINTER = "kuberlhf_run_log"

_console: Console | None = None  # set during quiet_run
_log: IO[str] | None = None  # run.log, during quiet_run
_verbose = False


def console() -> Console:
    """Where KubeRLHF's own lines go: the terminal during a run, standard error otherwise."""
    return _console or Console(stderr=True)


def say(text: str) -> None:
    """A line for the user's terminal from any process: a Ray worker marks it (the driver shows it, without
    Ray's prefix), the driver prints it."""
    if _console is not None:
        _console.print(text, soft_wrap=True, markup=False, highlight=False)
    else:
        print(MARK + text, file=sys.__stderr__, flush=True)


@contextmanager
def quiet_run(log_path: Path, verbose: bool = False) -> Iterator[Console]:
    """Send third-party output to `log_path` for the duration of a run (see the module docstring); with
    `verbose` it stays on the terminal too. Yields the run's console."""
    global _console, _log, _verbose
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    if not verbose:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    _console, _log, _verbose = Console(file=terminal, soft_wrap=True), log, verbose
    handlers = _route_python_logging(log, verbose)
    try:
        yield _console
    finally:
        _stop_routing_worker_output()
        _console, _log = None, None
        for logger, handler in handlers:
            logger.removeHandler(handler)
        logging.captureWarnings(False)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()
        log.close()


def log_exception() -> None:
    """The exception being handled, with its traceback, to run.log (and to the terminal with --verbose)."""
    if _log is not None:
        traceback.print_exc(file=_log)
    if _log is None or _verbose:
        traceback.print_exc()


def _route_python_logging(log: IO[str], verbose: bool) -> list[tuple[logging.Logger, logging.Handler]]:
    """Log records and warnings of every library to the log; the `kuberlhf` loggers' warnings to the console."""
    to_log = logging.StreamHandler(log)
    to_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.StreamHandler(_console.file)
    ours.setLevel(logging.WARNING)
    ours.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root, kuberlhf = logging.getLogger(), logging.getLogger("kuberlhf")
    root.addHandler(to_log)
    kuberlhf.addHandler(ours)
    logging.captureWarnings(True)
    return [(root, to_log), (kuberlhf, ours)]


def route_worker_output() -> None:
    """After `ray.init`: worker output to run.log (and the terminal with `--verbose`), marked lines to the
    console. Outside `quiet_run` (a run from Python, the tests) Ray's own printer stays."""
    if _console is None or _log is None:
        return
    from ray._private.ray_logging import global_worker_stdstream_dispatcher
    from ray._private.worker import filter_autoscaler_events

    run_console, log, verbose = _console, _log, _verbose

    def dispatch(batch: dict[str, Any]) -> None:
        who = batch.get("actor_name") or batch.get("task_name") or "worker"
        prefix = f"({who} pid={batch.get('pid')}, ip={batch.get('ip')}) "
        lines = batch.get("lines", [])
        if batch.get("pid") == "autoscaler":  # its status table every few seconds: only its events, as Ray does
            lines = list(filter_autoscaler_events(lines))
        for line in lines:
            log.write(prefix + line + "\n")
            if line.startswith(MARK):
                run_console.print(line[len(MARK):], soft_wrap=True, markup=False, highlight=False)
            elif verbose:
                run_console.print(prefix + line, soft_wrap=True, markup=False, highlight=False)

    global_worker_stdstream_dispatcher.remove_handler(RAY_PRINTER)
    global_worker_stdstream_dispatcher.remove_handler(OUR_PRINTER)
    global_worker_stdstream_dispatcher.add_handler(OUR_PRINTER, dispatch)


def _stop_routing_worker_output() -> None:
    ray_logging = sys.modules.get("ray._private.ray_logging")
    if ray_logging is not None:
        ray_logging.global_worker_stdstream_dispatcher.remove_handler(OUR_PRINTER)


def configure_worker_logging() -> None:
    """In a worker process: the `kuberlhf` loggers' warnings as marked lines (the driver shows them); vLLM's
    note that a weight reload left the rotary embedding's cache as it was (it is computed, not loaded) off."""
    kuberlhf = logging.getLogger("kuberlhf")
    if not any(getattr(h, "kuberlhf_marked", False) for h in kuberlhf.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(MARK + "%(levelname)s: %(message)s"))
        handler.kuberlhf_marked = True  # type: ignore[attr-defined]
        kuberlhf.addHandler(handler)
    reload_logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    reload_logger.addFilter(lambda record: not record.getMessage().startswith("RotaryEmbedding: "))

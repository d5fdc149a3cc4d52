"""Import and call user reward functions the way TRL's GRPOTrainer does, so one written for TRL works unchanged
(a reward service at `reward.url` is called through `reward_client.RemoteReward`).

A reward function is called with keyword arguments: `prompts`, `completions`, `completion_ids` (token ids),
every other column of the data by name (e.g. `answer`), `trainer_state` (`global_step`, `max_steps`),
and TRL's `log_metric(name, value)` and `log_extra(column, values)`. For conversational data, `prompts` are the
rows' message lists and each completion is `[{"role": "assistant", "content": text}]`, as in TRL; otherwise
both are strings. A function without `**kwargs` gets only the arguments it names. It returns one number per
completion; `None` means "no reward here" and counts 0, as TRL's sum over reward functions does with one.
`async def` functions are awaited.

A function that cannot be imported (or exits while importing), names a required argument it will never get,
raises, does not return within `reward.timeoutSeconds`, returns something other than a sequence of numbers,
the wrong number of values, or NaN is reported as a UserError naming the function (and the row, where there
is one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import math
import os
import queue
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kuberlhf.errors import UserError

RewardFunction = Callable[..., Any]


def import_reward_function(path: str) -> RewardFunction:
    """Import `package.module:callable`, looking in the working directory and PYTHONPATH."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(
            f"spec.reward.function: cannot import module {module_name!r}: {err} "
            "(is it in the working directory or on PYTHONPATH?)"
        ) from None
    except SystemExit as err:
        raise UserError(f"spec.reward.function: importing {module_name!r} called sys.exit({err.code!r})") from None
    except Exception as err:  # the module itself raised while importing
        raise UserError(f"spec.reward.function: importing {module_name!r} failed: {type(err).__name__}: {err}") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise UserError(f"spec.reward.function: module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise UserError(f"spec.reward.function: {path} is a {type(function).__name__}, not a callable")
    return function


CALL_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra")


def check_reward_signature(function: RewardFunction, path: str, columns: list[str]) -> None:
    """The function can be called as `call_reward_function` calls it: with keywords only, and every parameter
    without a default is one it will be given (the standard arguments or a data column)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    given = set(CALL_ARGUMENTS) | set(columns)
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and parameter.default is inspect.Parameter.empty:
            raise UserError(f"spec.reward.function: {path} takes {parameter.name!r} positionally only; reward "
                            "functions are called with keyword arguments (prompts=..., completions=...)")
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if required and parameter.name not in given:
            raise UserError(f"spec.reward.function: {path} requires {parameter.name!r}, which it is never given: "
                            f"it gets {', '.join(CALL_ARGUMENTS)} and the data's columns "
                            f"({', '.join(columns) or 'none besides prompt'})")


@dataclass(frozen=True)
class TrainerState:
    """The part of TRL's `trainer_state` that reward functions read to shape rewards by training progress."""

    global_step: int  # updates done so far (0 while the first batch is sampled), as TRL counts them
    max_steps: int


@dataclass
class RewardLog:
    """What a reward function logged during one call through TRL's `log_metric` and `log_extra`: scalar
    metrics (their mean goes to the step's metrics as `reward_fn/<name>`) and per-completion columns (written
    to samples.jsonl beside each completion)."""

    rows: int = 0  # completions scored in the call; every column is padded to this many values (None)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list[Any]) -> None:
        self.columns.setdefault(column, []).extend(values)

    def metric_means(self) -> dict[str, float]:
        return {f"reward_fn/{name}": sum(values) / len(values) for name, values in self.metrics.items() if values}

    def column(self, name: str) -> list[Any]:
        """A logged column with one value per completion (None where the function logged none)."""
        values = self.columns.get(name, [])[:self.rows]
        return values + [None] * (self.rows - len(values))

    def select(self, indices: list[int]) -> RewardLog:
        columns = {name: [self.column(name)[i] for i in indices] for name in self.columns}
        return RewardLog(len(indices), self.metrics, columns)

    @staticmethod
    def concat(parts: list[RewardLog]) -> RewardLog:
        """One log for the parts' completions in order: a column one part did not log is None there."""
        names = {name for part in parts for name in part.columns}
        joined = RewardLog(sum(part.rows for part in parts))
        for part in parts:
            for name, values in part.metrics.items():
                joined.metrics.setdefault(name, []).extend(values)
        joined.columns = {name: [v for part in parts for v in part.column(name)] for name in names}
        return joined


def call_reward_function(function: RewardFunction, name: str, prompts: list[Any], completions: list[Any],
                         columns: dict[str, list[Any]], completion_ids: list[list[int]] | None = None,
                         state: TrainerState | None = None, log: RewardLog | None = None,
                         timeout_s: float | None = None) -> list[float]:
    """Call a reward function as TRL does (see the module docstring) and check what it returns: one finite
    number per completion, within `timeout_s` seconds (the call runs on the process's reward thread; one that
    hangs is left there and the job fails)."""
    log = log if log is not None else RewardLog()
    arguments = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **columns,
                 "trainer_state": state, "log_metric": log.log_metric, "log_extra": log.log_extra}

    def call() -> Any:
        values = function(**accepted_arguments(function, arguments))
        if inspect.isawaitable(values):  # on one loop for the whole run, as TRL does (clients and locks bind to it)
            values = asyncio.run_coroutine_threadsafe(_awaited(values), _event_loop()).result()
        return values

    try:
        values = _on_reward_thread(call, timeout_s)
    except concurrent.futures.TimeoutError:
        raise UserError(f"reward function {name} did not return within {timeout_s:g} s "
                        "(spec.reward.timeoutSeconds)") from None
    except SystemExit as err:
        raise UserError(f"reward function {name} called sys.exit({err.code!r})") from None
    except Exception as err:
        raise UserError(f"reward function {name} raised {type(err).__name__}: {err}") from err
    if isinstance(values, (dict, str, bytes, set)) or not hasattr(values, "__len__"):
        raise UserError(f"reward function {name} must return a list with one number per completion, got a "
                        f"{type(values).__name__}")
    try:
        values = [0.0 if v is None else float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise UserError(f"reward function {name} must return a list of numbers: {err}") from None
    if len(values) != len(completions):
        raise UserError(f"reward function {name} returned {len(values)} values for {len(completions)} completions")
    for row, value in enumerate(values):
        if not math.isfinite(value):
            raise UserError(
                f"reward function {name} returned {value} for row {row} "
                f"(prompt {_short(prompts[row])}, completion {_short(completions[row])})"
            )
    return values


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def accepted_arguments(function: RewardFunction, arguments: dict[str, Any]) -> dict[str, Any]:
    """All of `arguments` for a function that takes `**kwargs`, else only those it names."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return arguments
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return arguments
    named = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                       inspect.Parameter.KEYWORD_ONLY)}
    return {key: value for key, value in arguments.items() if key in named}


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


_loop: asyncio.AbstractEventLoop | None = None
_calls: queue.SimpleQueue | None = None


def _on_reward_thread(call: Callable[[], Any], timeout_s: float | None) -> Any:
    """Run `call` on the process's one reward thread (a daemon: one that hangs never holds the process at exit),
    so it can be given up on after `timeout_s`; thread-local state a function keeps stays on one thread."""
    global _calls
    if _calls is None:
        import threading

        _calls = queue.SimpleQueue()
        threading.Thread(target=_serve_calls, args=(_calls,), name="kuberlhf-reward", daemon=True).start()
    future: concurrent.futures.Future = concurrent.futures.Future()
    _calls.put((call, future))
    return future.result(timeout=timeout_s)


def _serve_calls(calls: queue.SimpleQueue) -> None:
    while True:
        call, future = calls.get()
        try:
            future.set_result(call())
        except BaseException as err:  # SystemExit too: it belongs to the caller, not to this thread
            future.set_exception(err)


def _event_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for async reward functions, running in a daemon thread (started on first use)."""
    global _loop
    if _loop is None:
        import threading

        _loop = asyncio.new_event_loop()
        threading.Thread(target=_loop.run_forever, name="kuberlhf-reward-loop", daemon=True).start()
    return _loop

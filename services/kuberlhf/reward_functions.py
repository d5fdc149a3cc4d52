"""Import and call user reward functions: `fn(prompts, completions, **columns) -> list[float]`; and
`RemoteReward`, the same kind of function backed by a reward service (`reward.url`).

A function that cannot be imported, raises, returns the wrong number of values, or returns NaN is reported
as a UserError naming the function (and the row, where there is one).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
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
    except Exception as err:  # the module itself raised while importing
        raise UserError(f"spec.reward.function: importing {module_name!r} failed: {type(err).__name__}: {err}") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise UserError(f"spec.reward.function: module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise UserError(f"spec.reward.function: {path} is a {type(function).__name__}, not a callable")
    return function


def call_reward_function(
    function: RewardFunction, name: str, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]
) -> list[float]:
    """Call a reward function and check what it returns: one finite number per completion."""
    try:
        values = function(prompts=prompts, completions=completions, **columns)
    except Exception as err:
        raise UserError(f"reward function {name} raised {type(err).__name__}: {err}") from err
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise UserError(f"reward function {name} must return a list of numbers: {err}") from None
    if len(values) != len(completions):
        raise UserError(f"reward function {name} returned {len(values)} values for {len(completions)} completions")
    for row, value in enumerate(values):
        if not math.isfinite(value):
            raise UserError(
                f"reward function {name} returned {value} for row {row} "
                f"(prompt {prompts[row]!r}, completion {completions[row]!r})"
            )
    return values


class RemoteReward:
    """A reward function that asks a reward service: `fn(prompts, completions, **columns) -> list[float]`, so the
    rollout workers call it like any reward function (and check what it returns the same way)."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        payload = json.dumps({"prompts": list(prompts), "completions": list(completions)}).encode()
        request = urllib.request.Request(self.url, data=payload, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())["rewards"]
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise UserError(f"spec.reward.url: {self.url} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise UserError(f"spec.reward.url: cannot reach {self.url}: {getattr(err, 'reason', err)}") from None

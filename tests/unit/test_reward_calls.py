"""Reward functions that misbehave at call time: each is a one-line error naming the function."""

from __future__ import annotations

import threading
import time

import pytest

from kuberlhf.errors import UserError
from kuberlhf.reward_functions import call_reward_function


def call(function, timeout_s: float | None = None) -> list[float]:
    return call_reward_function(function, "rewards:f", ["p1", "p2"], ["c1", "c2"], {}, timeout_s=timeout_s)


def test_a_well_behaved_function_is_called_with_keywords():
    assert call(lambda prompts, completions, **_: [len(c) for c in completions]) == [2.0, 2.0]


@pytest.mark.parametrize("returned, message", [
    ({"c1": 1.0, "c2": 0.0}, "must return a list with one number per completion, got a dict"),
    ("10", "got a str"),
    (3.0, "got a float"),
    (["a", "b"], "must return a list of numbers"),
    ([1.0], "returned 1 values for 2 completions"),
    ([1.0, float("nan")], "returned nan for row 1"),
])
def test_what_a_function_returns_is_checked(returned, message):
    with pytest.raises(UserError, match=message):
        call(lambda **_: returned)


def test_a_function_that_hangs_fails_after_its_timeout():
    started, hung = time.monotonic(), threading.Event()
    try:
        with pytest.raises(UserError, match=r"reward function rewards:f did not return within 0.5 s "
                                            r"\(spec.reward.timeoutSeconds\)"):
            call(lambda **_: hung.wait(30), timeout_s=0.5)
        assert time.monotonic() - started < 5
    finally:
        hung.set()  # a job stops after this; the tests that follow need the reward thread


def test_a_function_that_exits_or_raises_is_named():
    def exits(**_):
        raise SystemExit(2)

    with pytest.raises(UserError, match=r"reward function rewards:f called sys.exit\(2\)"):
        call(exits)
    with pytest.raises(UserError, match="reward function rewards:f raised ZeroDivisionError"):
        call(lambda **_: 1 / 0)

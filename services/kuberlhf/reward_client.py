"""`RemoteReward`: a reward function backed by a reward service (`reward.url`, e.g. `kuberlhf serve-reward`).

Scoring is a pure function of the texts, so a request that fails in transit is sent again: on a connection,
read or protocol error, a timeout, or an answer of 408, 429 or 5xx (the statuses the OpenAI client retries),
up to `attempts` times with exponential back-off and jitter (tenacity). Any other answer (a 400 for a malformed
request, a body without `rewards`) fails at once: a second try would get the same.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import tenacity

from kuberlhf.errors import UserError

log = logging.getLogger(__name__)
RETRIED_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


class TransientAnswer(Exception):
    """An HTTP answer worth sending the request again for."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}: {response.text[:500]}")


class RemoteReward:
    """A reward function that asks a reward service: `fn(prompts, completions, **columns) -> list[float]`, so the
    rollout workers call it like any reward function (and check what it returns the same way). One connection
    pool per process (created on first use, so the object pickles)."""

    def __init__(self, url: str, timeout_s: float = 120.0, attempts: int = 4, backoff_s: float = 1.0) -> None:
        self.url, self.timeout_s, self.attempts, self.backoff_s = url, timeout_s, attempts, backoff_s
        self._client: httpx.Client | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        payload = {"prompts": list(prompts), "completions": list(completions)}
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_random_exponential(multiplier=self.backoff_s, max=30 * self.backoff_s),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, TransientAnswer)),
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING), reraise=True)
        try:
            response = retrying(self._post, payload)
        except TransientAnswer as err:
            raise UserError(f"spec.reward.url: {self.url} answered {err} ({self.attempts} attempts)") from None
        except httpx.TransportError as err:
            raise UserError(f"spec.reward.url: cannot reach {self.url} ({self.attempts} attempts): "
                            f"{type(err).__name__}: {err}") from None
        if response.is_error:
            raise UserError(f"spec.reward.url: {self.url} answered HTTP {response.status_code}: "
                            f"{response.text[:500]}")
        try:
            return response.json()["rewards"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"spec.reward.url: {self.url} answered without a `rewards` list: "
                            f"{response.text[:200]!r}") from None

    def _post(self, payload: dict[str, list[str]]) -> httpx.Response:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)
        response = self._client.post(self.url, json=payload)
        if response.status_code in RETRIED_STATUSES:
            raise TransientAnswer(response)
        return response

"""The reward service: a reward model behind HTTP on Ray Serve (`kuberlhf serve-reward --model DIR`); a job's
`reward.url` calls it through `kuberlhf.reward_functions.RemoteReward`.

Protocol: `POST <url>` with `{"prompts": [...], "completions": [...]}` (equal lengths), answer
`{"rewards": [...]}`, one float per completion. Concurrent requests are batched together (`serve.batch`) and
scored `batch_size` sequences per forward pass, exactly as the reward role and the rm stage score
(`models/reward.py`). A malformed request gets HTTP 400 with what is wrong.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

ROUTE = "/score"


@serve.deployment
class RewardModelServer:
    def __init__(self, model_path: str, batch_size: int) -> None:
        from kuberlhf.models.loading import load_reward_model, load_tokenizer
        from kuberlhf.engines.process import configure_process, worker_device

        configure_process(1, seed=0)
        self.device = worker_device()
        self.model = load_reward_model(model_path).to(self.device).eval()
        self.tokenizer = load_tokenizer(model_path, padding_side="right", field="--model")
        self.batch_size = batch_size

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score_requests(self, requests: list[tuple[list[str], list[str]]]) -> list[list[float]]:
        """Score several requests' completions in shared forward passes; one list of rewards per request."""
        from kuberlhf.models.reward import score_texts

        prompts = [p for request in requests for p in request[0]]
        completions = [c for request in requests for c in request[1]]
        rewards = score_texts(self.model, self.tokenizer, prompts, completions, self.batch_size, self.device).tolist()
        answers, start = [], 0
        for request_prompts, _ in requests:
            answers.append(rewards[start : start + len(request_prompts)])
            start += len(request_prompts)
        return answers

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        problem = request_problem(body)
        if problem:
            return JSONResponse({"error": problem}, status_code=400)
        if not body["prompts"]:
            return JSONResponse({"rewards": []})
        return JSONResponse({"rewards": await self.score_requests((body["prompts"], body["completions"]))})


def request_problem(body: Any) -> str | None:
    """What is wrong with a scoring request, or None."""
    if not isinstance(body, dict):
        return "expected an object with prompts and completions"
    for key in ("prompts", "completions"):
        values = body.get(key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return f"{key}: expected a list of strings"
    if len(body["prompts"]) != len(body["completions"]):
        return f"{len(body['prompts'])} prompts but {len(body['completions'])} completions"
    return None


def reward_app(model_path: str, batch_size: int = 64, replicas: int = 1, cpus: float = 1.0,
               gpus: float = 0.0) -> Any:
    """The Ray Serve application for `serve.run`."""
    return RewardModelServer.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": cpus, "num_gpus": gpus},
    ).bind(model_path, batch_size)

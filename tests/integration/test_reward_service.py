"""The reward service end to end: a reward model on Ray Serve scores over HTTP exactly as the reward role does,
batches concurrent requests, answers malformed ones with 400, and a GRPO job trains with it via reward.url."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kuberlhf.models.loading import load_reward_model, load_tokenizer, new_reward_model
from kuberlhf.models.reward import score_texts
from kuberlhf.reward_client import RemoteReward

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow
PROMPTS = ["12+3=", "40+2=", "7+7=", "1+1="]
COMPLETIONS = ["15", "41", "14", "3"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def reward_model(assets, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reward-model")
    torch.manual_seed(0)
    model = new_reward_model(assets["model"], load_tokenizer(assets["model"]).pad_token_id)
    model.save_pretrained(path)
    load_tokenizer(assets["model"]).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def service(reward_model):
    """A Ray cluster (as a job would find at RAY_ADDRESS) serving the reward model; yields (url, address)."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from kuberlhf.serve.launch import start_reward_service

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    ray.init(address=cluster.address, namespace="kuberlhf")
    try:
        url = start_reward_service(reward_model, port=free_port(), batch_size=2, cpus=1)
        yield url, cluster.address
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def test_the_service_scores_as_the_reward_role_does(service, reward_model):
    url, _ = service
    served = RemoteReward(url)(PROMPTS, COMPLETIONS)
    model, tokenizer = load_reward_model(reward_model), load_tokenizer(reward_model, padding_side="right")
    direct = score_texts(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=4, device=torch.device("cpu"))
    torch.testing.assert_close(torch.tensor(served), direct, atol=1e-5, rtol=1e-5)


def test_concurrent_requests_each_get_their_own_rewards(service):
    url, _ = service
    remote = RemoteReward(url)
    one_by_one = [remote([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # served together through serve.batch
        together = list(pool.map(lambda pc: remote([pc[0]], [pc[1]])[0], zip(PROMPTS, COMPLETIONS)))
    assert together == pytest.approx(one_by_one, abs=1e-5)


def test_a_malformed_request_gets_400_with_what_is_wrong(service):
    url, _ = service
    request = urllib.request.Request(url, data=json.dumps({"prompts": ["a"], "completions": []}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400 and "1 prompts but 0 completions" in caught.value.read().decode()


def test_a_grpo_job_trains_with_reward_url(service, assets, tmp_path):
    url, address = service
    result = subprocess.run(
        [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / "grpo-tiny.yaml"),
         "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
         "--set", "spec.data.eval=", "--set", "spec.training.steps=2", "--set", f"spec.output.dir={tmp_path}",
         "--set", "spec.reward.function=", "--set", f"spec.reward.url={url}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": address},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["reward/std"] > 0 for r in records)  # the model's scores, not zeros


def test_an_unreachable_reward_url_fails_before_anything_starts(assets, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kuberlhf.cli", "validate", str(EXAMPLES / "grpo-tiny.yaml"),
         "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
         "--set", "spec.data.eval=", "--set", "spec.reward.function=",
         "--set", f"spec.reward.url=http://127.0.0.1:{free_port()}/score"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "spec.reward.url: cannot reach" in result.stderr

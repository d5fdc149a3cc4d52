"""The runtime on a real (embedded) Ray: named role actors in one placement group, checkpoints that resume to
exactly the same weights, and user errors from inside actors reported without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kuberlhf.jobfile import load_job

from .conftest import EXAMPLES, run_example

pytestmark = pytest.mark.slow


def test_roles_are_named_actors_in_one_placement_group(assets, tmp_path):
    import ray

    from kuberlhf.launcher import ray_session
    from kuberlhf.preflight import check_local_inputs
    from kuberlhf.workers.launch import start_workers

    job = load_job(EXAMPLES / "ppo-tiny.yaml", [f"spec.policy.model={assets['model']}",
                                                f"spec.data.train={assets['train']}",
                                                f"spec.data.eval={assets['eval']}"])
    with ray_session(job, dashboard=False):
        workers = start_workers(job, check_local_inputs(job))
        try:
            names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
            assert {"ppo-tiny-policy-0", "ppo-tiny-rollout-0", "ppo-tiny-reference-0", "ppo-tiny-critic-0"} <= names
            assert "ppo-tiny-reward-0" not in names  # a reward function runs inside the rollout workers
            table = ray.util.placement_group_table(workers.placement_group)
            assert table["state"] == "CREATED" and table["bundles"] == {0: {"CPU": 1.0}}
        finally:
            workers.shutdown()


def test_reward_function_error_inside_an_actor_is_a_clear_user_error(assets, tmp_path):
    """The reward module ships in `runtimeEnv.workingDir` (not importable where the driver runs) and reads a
    `runtimeEnv.envVars` variable: the workers import it from there and see the variable, since the error they
    report is the one it makes."""
    code, elsewhere = tmp_path / "code", tmp_path / "elsewhere"
    (code / "..2026_12_04").mkdir(parents=True)  # laid out as Kubernetes mounts a ConfigMap: symlinks into ..data
    elsewhere.mkdir()
    (code / "..2026_12_04" / "broken_reward.py").write_text(
        "import os\n\ndef reward(prompts, completions, **columns):\n"
        "    return [1.0] * (len(completions) - int(os.environ['DROP']))\n")
    (code / "..data").symlink_to("..2026_12_04")
    (code / "broken_reward.py").symlink_to("..data/broken_reward.py")
    job_file = tmp_path / "job.yaml"
    job_file.write_text((EXAMPLES / "grpo-tiny.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "kuberlhf.cli", "run", str(job_file), "--no-dashboard",
         "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
         "--set", "spec.data.eval=", "--set", "spec.reward.function=broken_reward:reward",
         "--set", f"spec.runtimeEnv={{workingDir: {code}, envVars: {{DROP: '1'}}}}", "--set", "spec.output.dir=out"],
        capture_output=True, text=True, cwd=elsewhere, timeout=300,
    )
    assert (elsewhere / "out" / "run.log").is_file()  # a relative output dir stays the driver's
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: reward function broken_reward:reward returned 127 values for 128 completions"


def test_an_error_in_an_actor_constructor_is_one_line(assets, tmp_path):
    import socket

    with socket.socket() as taken:  # the job names this port; the metrics actor's constructor cannot bind it
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / "grpo-tiny.yaml"), "--no-dashboard",
             "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
             "--set", "spec.data.eval=", "--set", f"spec.metrics.port={port}",
             "--set", f"spec.output.dir={tmp_path / 'out'}"],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: spec.metrics.port: cannot serve metrics on port {port} (Address already in use); choose another "
        f"port, 0 for any free one, or set spec.metrics.enabled: false")


def test_ppo_with_a_reward_model_and_a_critic_initialised_from_it(assets, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    reward_dir = tmp_path / "reward-model"
    LlamaForSequenceClassification(config).save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)

    summary = run_example("ppo-tiny", assets, tmp_path / "out", "spec.training.steps=2", "spec.reward.function=",
                          f"spec.reward.model={reward_dir}")
    records = [json.loads(line) for line in open(summary["metrics_file"])]
    assert len(records) == 2
    assert records[0]["reward/std"] > 0  # the model scores completions differently
    assert records[0]["critic/values_mean"] != 0  # the value head started from the reward model's score head


def test_run_on_the_ray_cluster_at_ray_address_with_two_rollout_and_reference_workers(assets, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    address = cluster.address
    try:
        result = subprocess.run(
            [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / "grpo-tiny.yaml"),
             "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
             "--set", "spec.data.eval=", "--set", "spec.training.steps=2", "--set", f"spec.output.dir={tmp_path}",
             "--set", "spec.resources.rollout.workers=2", "--set", "spec.resources.reference.workers=2"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": address},
        )
    finally:
        cluster.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"grpo on Ray cluster {address}" in result.stderr
    assert (tmp_path / "final" / "config.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[1]["kl/sequence"] != 0  # both halves came back and were scored

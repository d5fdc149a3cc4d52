"""Placement. A job asking for more CPUs than the embedded Ray has is refused before any actor starts. On a
simulated two-node Ray cluster (`ray.cluster_utils.Cluster`): `separate` spreads the roles' bundles over both
nodes and each actor runs on its bundle's node; `colocate` keeps every role on one node, and every CPU worker runs on jemalloc (engines/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray
from ray.cluster_utils import Cluster

from kuberlhf.jobfile import load_job
from kuberlhf.preflight import check_local_inputs
from kuberlhf.workers.launch import start_workers

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow


def test_a_job_bigger_than_the_embedded_ray_is_refused_before_any_actor_starts(assets, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / "ppo-tiny.yaml"), "--no-dashboard",
         "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
         "--set", f"spec.data.eval={assets['eval']}", "--set", f"spec.output.dir={tmp_path / 'out'}",
         "--set", "spec.metrics.port=0", "--set", "spec.resources.critic.cpus=64"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert (f"error: spec.resources: the job needs 64 CPUs and 0 GPUs in 1 bundles, but this machine's Ray has "
            f"{os.cpu_count()} CPUs") in run.stderr
    assert "PolicyWorker" not in run.stdout + run.stderr  # no actor was started
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, runtime_env={"env_vars": {"KUBERLHF_JOB_ENV_PROBE": "job"}})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def actor_nodes(workers) -> dict[str, str]:
    """`role-rank` -> the node id its actor runs on."""
    where = {}
    for group in workers.groups():
        for rank, actor in enumerate(group.actors):
            node = ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
            where[f"{group.role}-{rank}"] = node
    return where


def process_of(actor) -> tuple[bool, str | None, str | None]:
    """Whether the actor's process has jemalloc mapped, its MALLOC_CONF, and an env var the job's runtime_env set."""
    def look(self):
        with open("/proc/self/maps") as maps:
            mapped = any("libjemalloc" in line for line in maps)
        return mapped, os.environ.get("MALLOC_CONF"), os.environ.get("KUBERLHF_JOB_ENV_PROBE")
    return ray.get(actor.__ray_call__.remote(look))


def start(assets, placement: str):
    job = load_job(EXAMPLES / "ppo-tiny.yaml", [
        f"spec.policy.model={assets['model']}", f"spec.data.train={assets['train']}", "spec.data.eval=",
        "spec.rollout.engine=hf", f"spec.resources.placement={placement}",
    ])
    return start_workers(job, check_local_inputs(job))


def test_separate_placement_spreads_roles_over_both_nodes(two_nodes, assets):
    workers = start(assets, "separate")
    try:
        nodes = actor_nodes(workers)
        bundles = ray.util.placement_group_table(workers.placement_group)["bundles_to_node_id"]
        assert len(bundles) == 4  # policy, rollout, reference, critic: one bundle each
        assert len(set(bundles.values())) == 2
        assert len(set(nodes.values())) == 2
        assert nodes["policy-0"] == bundles[0] and nodes["rollout-0"] == bundles[1]  # each actor on its bundle
    finally:
        workers.shutdown()


def test_colocated_roles_share_one_node(two_nodes, assets):
    workers = start(assets, "colocate")
    try:
        bundles = ray.util.placement_group_table(workers.placement_group)["bundles_to_node_id"]
        assert len(bundles) == 1
        assert set(actor_nodes(workers).values()) == {bundles[0]}
        # CPU workers run on the retaining jemalloc (engines/allocator.py), with the job's env vars kept
        for group in workers.groups():
            assert process_of(group.actors[0]) == (True, "dirty_decay_ms:-1,muzzy_decay_ms:-1", "job"), group.role
    finally:
        workers.shutdown()


def test_init_gpus_puts_rank_i_of_every_role_on_gpu_i(two_nodes, tmp_path):
    """`kuberlhf init --gpus 2` for PPO, on a node with two (logical) GPUs: Ray gives rank i of every role the
    same GPU, and the two ranks different ones."""
    from kuberlhf.init_job import recommend
    from kuberlhf.jobfile import validate_job
    from kuberlhf.workers.placement import create_placement_group, plan_placement

    gpu_node = two_nodes.add_node(num_cpus=8, num_gpus=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1+1="}\n')
    spec = validate_job(recommend(str(prompts), reward="models/reward", gpus=2).job).spec
    bundles, plan = plan_placement(spec.resources, list(spec.roles))
    group = create_placement_group(bundles, separate=False)
    probe = ray.remote(lambda: (ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES")))
    try:
        seen = {(role, rank): ray.get(probe.options(**where.options(group)).remote())
                for role, placements in plan.items() for rank, where in enumerate(placements)}
        assert {node for node, _ in seen.values()} == {gpu_node.node_id}
        by_rank = [{gpu for (_, rank), (_, gpu) in seen.items() if rank == r} for r in (0, 1)]
        assert all(len(gpus) == 1 for gpus in by_rank) and by_rank[0] != by_rank[1], seen  # one GPU per rank
    finally:
        ray.util.remove_placement_group(group)
        two_nodes.remove_node(gpu_node)

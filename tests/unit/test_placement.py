"""Placement plans (pure): which bundle each role's actors use and what they ask for."""

from __future__ import annotations

from kuberlhf.spec import ResourcesSpec
from kuberlhf.workers.placement import ActorPlacement, engine_memory_share, plan_placement

ROLES = ["policy", "rollout", "reward"]


def test_colocated_roles_share_one_bundle_and_split_it():
    bundles, plan = plan_placement(ResourcesSpec(), ROLES)
    assert bundles == [{"CPU": 1.0}]
    assert plan["policy"] == [ActorPlacement(0, 1 / 3, 0.0)]
    assert sum(p[0].num_cpus for p in plan.values()) == 1.0


def test_colocated_bundle_is_as_large_as_the_largest_request():
    resources = ResourcesSpec.model_validate({"policy": {"cpus": 2, "gpus": 1}, "rollout": {"workers": 2}})
    bundles, plan = plan_placement(resources, ROLES)
    assert bundles == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0}]
    assert plan["rollout"] == [ActorPlacement(0, 2 / 3, 1 / 3), ActorPlacement(1, 1.0, 0.0)]


def test_separate_placement_gives_every_actor_its_own_bundle():
    resources = ResourcesSpec.model_validate({"placement": "separate", "rollout": {"workers": 2, "gpus": 1}})
    bundles, plan = plan_placement(resources, ROLES)
    assert bundles == [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0}]
    assert [p.bundle_index for p in plan["rollout"]] == [1, 2]
    assert plan["reward"] == [ActorPlacement(3, 1.0, 0.0)]


def test_a_vllm_engine_takes_its_share_of_a_shared_gpu_and_vllms_default_of_its_own():
    assert engine_memory_share(0.25, None) == 0.25  # four roles take turns on the GPU
    assert engine_memory_share(1 / 3, None) == 0.3333
    assert engine_memory_share(1.0, None) == 0.92  # a GPU to itself: vLLM 0.32's default
    assert engine_memory_share(2.0, None) == 0.92  # tensor parallel over two whole GPUs
    assert engine_memory_share(0.25, 0.6) == 0.6  # rollout.gpuMemoryUtilization wins


def test_colocated_synchronous_phases_use_the_whole_bundle_in_turn():
    from kuberlhf.spec import ResourcesSpec
    from kuberlhf.workers.placement import phase_threads

    resources = ResourcesSpec.model_validate({"policy": {"cpus": 4}, "rollout": {"cpus": 2}})
    ppo = phase_threads(resources, ["policy", "rollout", "reward", "reference", "critic"], overlapping=False,
                        policy_scores=True)
    assert ppo["rollout"] == {"generate": 4}  # samples alone: every core of the bundle
    assert ppo["reference"] == ppo["reward"] == {"score": 1}  # four roles score at once
    assert ppo["critic"] == {"score": 1, "update": 2} and ppo["policy"] == {"score": 1, "update": 2}
    grpo = phase_threads(resources, ["policy", "rollout"], overlapping=False, policy_scores=False)
    assert grpo == {"policy": {"update": 4}, "rollout": {"generate": 4}}


def test_overlapping_phases_and_separate_bundles_keep_each_roles_own_cpus():
    from kuberlhf.spec import ResourcesSpec
    from kuberlhf.workers.placement import phase_threads

    own = {"generate": 1, "score": 1, "update": 1}
    colocated = ResourcesSpec.model_validate({"policy": {"cpus": 3}})
    assert phase_threads(colocated, ["policy", "rollout"], overlapping=True, policy_scores=False) == {
        "policy": {"generate": 3, "score": 3, "update": 3}, "rollout": own}
    separate = ResourcesSpec.model_validate({"placement": "separate", "policy": {"cpus": 3}})
    assert phase_threads(separate, ["policy", "rollout"], overlapping=False, policy_scores=False)["rollout"] == own


def test_cpu_workers_get_the_retaining_jemalloc_and_gpu_workers_or_a_users_preload_do_not(monkeypatch):
    from pathlib import Path

    from kuberlhf.engines.allocator import RETAINING_CONF, allocator_options, allocator_runtime_env

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    env = allocator_runtime_env(0)["env_vars"]
    assert Path(env["LD_PRELOAD"]).name == "libjemalloc.so" and Path(env["LD_PRELOAD"]).is_file()
    assert env["MALLOC_CONF"] == RETAINING_CONF == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert allocator_options(0) == {"runtime_env": {"env_vars": env}}
    assert allocator_runtime_env(0.5) == {} and allocator_options(1) == {}  # CUDA's caching allocator
    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:0")  # the user's jemalloc settings win
    assert allocator_runtime_env(0)["env_vars"]["MALLOC_CONF"] == "dirty_decay_ms:0"
    monkeypatch.setenv("LD_PRELOAD", "/opt/tcmalloc.so")  # the user's allocator: left alone
    assert allocator_runtime_env(0) == {} and allocator_options(0) == {}

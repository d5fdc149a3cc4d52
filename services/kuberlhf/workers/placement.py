"""Placement: where each role's actors run, through one Ray placement group per job.

- `colocate`: roles share bundles. Bundle i holds rank i of every role; its size is the largest request among
  them, and each actor asks for its share of it, so colocated roles take turns on the same CPUs/GPUs.
- `separate`: every (role, rank) gets a bundle of its own, spread across nodes where the cluster has several.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

from kuberlhf.errors import UserError
from kuberlhf.spec_training import ResourcesSpec, RoleResources

if TYPE_CHECKING:  # Ray is imported where it is used: the operator sizes clusters with plan_placement, without Ray
    from ray.util.placement_group import PlacementGroup


@dataclass(frozen=True)
class ActorPlacement:
    """Ray options for one actor: its bundle and the resources it asks for."""

    bundle_index: int
    num_cpus: float
    num_gpus: float

    def options(self, group: PlacementGroup) -> dict:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from kuberlhf.engines.allocator import allocator_options

        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=self.bundle_index),
            **allocator_options(self.num_gpus),
        }


def plan_placement(resources: ResourcesSpec, roles: list[str]) -> tuple[list[dict[str, float]], dict[str, list[ActorPlacement]]]:
    """Bundles and per-actor placements for the roles a job uses (pure: no Ray calls)."""
    specs: dict[str, RoleResources] = {role: getattr(resources, role) for role in roles}
    if resources.placement == "separate":
        bundles, plan = [], {}
        for role, spec in specs.items():
            plan[role] = []
            for _ in range(spec.workers):
                plan[role].append(ActorPlacement(len(bundles), spec.cpus, spec.gpus))
                bundles.append(_bundle(spec.cpus, spec.gpus))
        return bundles, plan
    ranks = max(spec.workers for spec in specs.values())
    bundles, plan = [], {role: [] for role in roles}
    for rank in range(ranks):
        sharing = [role for role, spec in specs.items() if spec.workers > rank]
        cpus = max(specs[role].cpus for role in sharing)
        gpus = max(specs[role].gpus for role in sharing)
        bundles.append(_bundle(cpus, gpus))
        for role in sharing:
            plan[role].append(ActorPlacement(rank, cpus / len(sharing), gpus / len(sharing)))
    return bundles, plan


VLLM_DEFAULT_MEMORY_SHARE = 0.92  # vLLM 0.32's own default, for an engine with its GPUs to itself


def engine_memory_share(num_gpus: float, setting: float | None) -> float:
    """The share of each of its GPUs' memory a vLLM engine takes (`rollout.gpuMemoryUtilization`). Unset, an
    engine on part of a GPU (`num_gpus` under 1: colocated roles take turns on it) takes that part; an engine on
    whole GPUs takes vLLM's default. vLLM refuses to start when less than its share of the GPU is free."""
    if setting is not None:
        return setting
    return round(num_gpus, 4) if 0 < num_gpus < 1 else VLLM_DEFAULT_MEMORY_SHARE


def phase_threads(resources: ResourcesSpec, roles: list[str], overlapping: bool, policy_scores: bool
                  ) -> dict[str, dict[str, int]]:
    """Torch threads of each role's work, by phase: `generate` (rollout), `score` (reference, reward, critic
    values, and the policy's old log-probs when `policy_scores`), `update` (policy, critic).

    Colocated roles of a synchronous step take turns on one bundle of CPUs, so whichever phase runs may use all
    of it: the rollout every core while it samples, the roles that score at once an equal share each, the policy
    (and critic) the cores while they train. With separate bundles, or phases that overlap (`overlapping`: one
    step off policy), each role keeps the threads of its own `cpus`."""
    own = {role: max(1, math.floor(getattr(resources, role).cpus)) for role in roles}
    if resources.placement == "separate" or overlapping:
        return {role: {"generate": own[role], "score": own[role], "update": own[role]} for role in roles}
    cores = max(own.values())
    scorers = [r for r in ("reference", "reward", "critic") if r in roles] + (["policy"] if policy_scores else [])
    trainers = [r for r in ("policy", "critic") if r in roles]
    threads: dict[str, dict[str, int]] = {role: {} for role in roles}
    threads["rollout"]["generate"] = cores
    for role in scorers:
        threads[role]["score"] = max(1, cores // len(scorers))
    for role in trainers:
        threads[role]["update"] = max(1, cores // len(trainers))
    return threads


def create_placement_group(bundles: list[dict[str, float]], separate: bool, timeout_s: float = 60.0) -> PlacementGroup:
    """Reserve the bundles; fail with the numbers when the cluster cannot hold them."""
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group(bundles, strategy="SPREAD" if separate else "PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        wanted = {key: sum(b.get(key, 0) for b in bundles) for key in ("CPU", "GPU")}
        raise UserError(
            f"spec.resources: the job needs {wanted['CPU']:g} CPUs and {wanted['GPU']:g} GPUs in {len(bundles)} "
            f"bundles, but the Ray cluster has {ray.cluster_resources().get('CPU', 0):g} CPUs and "
            f"{ray.cluster_resources().get('GPU', 0):g} GPUs; lower resources.*.cpus/gpus/workers"
        )
    return group


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}

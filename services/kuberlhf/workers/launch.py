"""Start a job's workers: one placement group, then each role's actors, named `<job>-<role>-<rank>` so the
Ray dashboard shows which job and role an actor serves."""

from __future__ import annotations

from dataclasses import dataclass

import ray

from kuberlhf.errors import user_error_in
from kuberlhf.plan import compile_plan
from kuberlhf.preflight import ResolvedInputs
from kuberlhf.engines.training import TrainingSetup, training_setup
from kuberlhf.spec import RLHFJob, RLHFJobSpec
from kuberlhf.workers.critic import CriticWorker
from kuberlhf.workers.group import WorkerGroup
from kuberlhf.workers.placement import ActorPlacement, create_placement_group, engine_memory_share, plan_placement
from kuberlhf.workers.policy import PolicyWorker
from kuberlhf.workers.reference import ReferenceWorker
from kuberlhf.workers.reward import RewardWorker
from kuberlhf.workers.rollout import RolloutWorker
from kuberlhf.workers.weight_sync import WeightSync, make_weight_sync, resolve_transport

NAMESPACE = "kuberlhf"
FROZEN_ROLES = (RolloutWorker, ReferenceWorker, RewardWorker)


@dataclass
class ScoringWorkers:
    """The roles that sample and score: the rollout engines (which run a reward function) and the reward model,
    when the job has one. An evaluation needs no more."""

    rollout: WorkerGroup
    reward: WorkerGroup | None  # None: a reward function, run by the rollout workers
    placement_group: object

    def groups(self) -> list[WorkerGroup]:
        return [g for g in vars(self).values() if isinstance(g, WorkerGroup)]

    def shutdown(self) -> None:
        for group in self.groups():
            group.kill()
        ray.util.remove_placement_group(self.placement_group)


@dataclass
class RoleWorkers(ScoringWorkers):
    """Every role of a training run."""

    policy: WorkerGroup
    reference: WorkerGroup | None
    critic: WorkerGroup | None
    weight_sync: WeightSync | None = None  # connected once the trained groups are up


def start_workers(job: RLHFJob, inputs: ResolvedInputs) -> RoleWorkers:
    spec = job.spec
    job_plan = compile_plan(spec)  # the roles the algorithm starts (as preflight resolved their models), placed
    roles, models, plan, threads = job_plan.roles, inputs.models, job_plan.placements, job_plan.threads
    group = create_placement_group(job_plan.bundles, separate=spec.resources.placement == "separate")
    t = spec.training
    transport = resolve_transport(spec.rollout.weight_sync.transport, spec.rollout.tensor_parallel_size)

    def start(role: str, cls: type, *args: object) -> WorkerGroup:
        return start_role(job, role, cls, plan[role], threads[role], group, transport, *args)

    rollout = start_rollout(job, inputs, plan["rollout"], threads["rollout"], group, transport,
                            # colocated with the trainer and taking turns with it: free the GPU memory while it trains
                            spec.resources.placement == "colocate" and not spec.rollout.one_step_off_policy)
    if inputs.rollout_engine == "vllm" and any(where.num_gpus for where in plan["rollout"]):
        # vLLM takes for its own whatever GPU memory gets used while it starts (it sizes its KV cache from the
        # drop in free memory): the roles that share its GPUs load their models once it is up
        wait_until_ready(ScoringWorkers(rollout, None, group))
    workers = RoleWorkers(
        policy=start("policy", PolicyWorker, models["policy"]),
        rollout=rollout,
        reward=start("reward", RewardWorker, models["reward"], spec.reward.batch_size) if "reward" in roles else None,
        reference=start("reference", ReferenceWorker, models["reference"]) if "reference" in roles else None,
        critic=start("critic", CriticWorker, models["critic"]) if "critic" in roles else None,
        placement_group=group,
    )
    wait_until_ready(workers)
    critic = spec.critic_settings
    critic_lr = critic.learning_rate if critic and critic.learning_rate else t.learning_rate
    setups = [(workers.policy, training_setup(spec, t.learning_rate, "policy"))]
    if workers.critic:
        setups.append((workers.critic, training_setup(spec, critic_lr, "critic")))
    # every rank of a group joins its process group at once; groups are independent
    get_or_shut_down(workers, [ref for group, setup in setups for ref in start_training_group(group, setup)])
    probe_prompts, _ = inputs.train.select(list(range(min(spec.rollout.weight_sync.probe_prompts, len(inputs.train)))))
    probe_rows = get_or_shut_down(workers, [workers.rollout.actors[0].probe_rows.remote(probe_prompts)])[0]
    try:
        workers.weight_sync = make_weight_sync(transport, workers.policy, workers.rollout, probe_rows,
                                               spec.rollout.weight_sync, t.call_timeout_seconds)
    except BaseException:
        workers.shutdown()
        raise
    return workers


def start_role(job: RLHFJob, role: str, cls: type, placements: list[ActorPlacement], threads: dict[str, int],
               group: object, transport: str, *args: object) -> WorkerGroup:
    """One role's actors in the placement group, rank by rank. Torch threads (Ray reserves the placement's CPUs):
    a frozen role's phase's; a trained role starts with its update's and switches with each phase."""
    spec = job.spec
    trained = cls in (PolicyWorker, CriticWorker)
    cpus = threads["update"] if trained else threads.get("generate") or threads["score"]
    actors = []
    for rank, where in enumerate(placements):
        remote = ray.remote(cls).options(name=f"{job.metadata.name}-{role}-{rank}", namespace=NAMESPACE,
                                         **where.options(group))
        extra = {"rank": rank, "reward_url": spec.reward.url, "reward_timeout_s": spec.reward.timeout_seconds,
                 "broadcast_weights": transport == "broadcast",
                 "gpu_memory_utilization": engine_memory_share(where.num_gpus, spec.rollout.gpu_memory_utilization),
                 } if cls is RolloutWorker else {}
        if cls in FROZEN_ROLES:  # trained roles get their precision from DeepSpeed (TrainingSetup.bf16)
            extra["bf16"] = spec.training.bf16
        if cls is PolicyWorker:
            extra["lora"] = spec.policy.lora
        if trained:
            extra["threads"] = threads
        actors.append(remote.remote(*args, cpus=cpus, seed=spec.training.seed + rank, **extra))
    return WorkerGroup(role, actors, spec.training.call_timeout_seconds)


def start_rollout(job: RLHFJob, inputs: ResolvedInputs, placements: list[ActorPlacement], threads: dict[str, int],
                  group: object, transport: str, sleep_between_steps: bool) -> WorkerGroup:
    """The rollout engines (each runs the reward function, when the job has one), on `inputs.models['rollout']`."""
    spec = job.spec
    return start_role(job, "rollout", RolloutWorker, placements, threads, group, transport, inputs.models["rollout"],
                      spec.reward.function, inputs.rollout_engine,
                      spec.data.max_prompt_tokens + spec.rollout.max_new_tokens, spec.rollout.tensor_parallel_size,
                      sleep_between_steps)


def start_scoring_workers(job: RLHFJob, inputs: ResolvedInputs) -> ScoringWorkers:
    """The rollout engines on `inputs.models['rollout']` (no weight sync: they keep that model) and the reward
    model, placed as the job places them, with the threads they have in a run (the same numbers)."""
    spec, job_plan = job.spec, compile_plan(job.spec)
    roles = ["rollout"] + (["reward"] if "reward" in job_plan.roles else [])
    bundles, placements = plan_placement(spec.resources, roles)
    group = create_placement_group(bundles, separate=spec.resources.placement == "separate")
    threads = job_plan.threads
    workers = ScoringWorkers(
        rollout=start_rollout(job, inputs, placements["rollout"], threads["rollout"], group, "objectStore", False),
        reward=start_role(job, "reward", RewardWorker, placements["reward"], threads["reward"], group, "objectStore",
                          inputs.models["reward"], spec.reward.batch_size) if "reward" in roles else None,
        placement_group=group,
    )
    wait_until_ready(workers)
    return workers


def start_training_group(group: WorkerGroup, setup: TrainingSetup) -> list[ray.ObjectRef]:
    """Rank 0 names the rendezvous address; every rank then builds its engine (DeepSpeed joins the group)."""
    address, port = ray.get(group.actors[0].master_address.remote())
    world = len(group)
    return [actor.setup_training.remote(setup, rank, world, address, port) for rank, actor in enumerate(group.actors)]


def wait_until_ready(workers: ScoringWorkers) -> None:
    """Block until every actor has loaded its model; a user error in a constructor surfaces here."""
    get_or_shut_down(workers, [actor.__ray_ready__.remote() for g in workers.groups() for actor in g.actors])


def get_or_shut_down(workers: ScoringWorkers, refs: list[ray.ObjectRef]) -> list:
    """`ray.get`; on failure stop the job's actors, and raise a user's mistake behind it as the UserError."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as err:
        workers.shutdown()
        cause = user_error_in(err)
        if cause is not None:
            raise cause from None
        raise

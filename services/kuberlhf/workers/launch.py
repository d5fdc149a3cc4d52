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
from kuberlhf.workers.placement import create_placement_group
from kuberlhf.workers.policy import PolicyWorker
from kuberlhf.workers.reference import ReferenceWorker
from kuberlhf.workers.reward import RewardWorker
from kuberlhf.workers.rollout import RolloutWorker
from kuberlhf.workers.weight_sync import WeightSync, make_weight_sync, resolve_transport

NAMESPACE = "kuberlhf"
FROZEN_ROLES = (RolloutWorker, ReferenceWorker, RewardWorker)


@dataclass
class RoleWorkers:
    policy: WorkerGroup
    rollout: WorkerGroup
    reward: WorkerGroup | None  # None: a reward function, run by the rollout workers
    reference: WorkerGroup | None
    critic: WorkerGroup | None
    placement_group: object
    weight_sync: WeightSync | None = None  # connected once the trained groups are up

    def groups(self) -> list[WorkerGroup]:
        return [g for g in (self.policy, self.rollout, self.reward, self.reference, self.critic) if g is not None]

    def shutdown(self) -> None:
        for group in self.groups():
            group.kill()
        ray.util.remove_placement_group(self.placement_group)


def start_workers(job: RLHFJob, inputs: ResolvedInputs) -> RoleWorkers:
    spec = job.spec
    job_plan = compile_plan(spec)  # the roles the algorithm starts (as preflight resolved their models), placed
    roles, models, plan, threads = job_plan.roles, inputs.models, job_plan.placements, job_plan.threads
    group = create_placement_group(job_plan.bundles, separate=spec.resources.placement == "separate")
    seed, t = spec.training.seed, spec.training
    transport = resolve_transport(spec.rollout.weight_sync.transport, spec.rollout.tensor_parallel_size)

    def start(role: str, cls: type, *args: object) -> WorkerGroup:
        # torch threads (Ray reserves the placement's CPUs): a frozen role's phase's; a trained role starts with its
        # update's and switches with each phase
        trained = cls in (PolicyWorker, CriticWorker)
        cpus = threads[role]["update"] if trained else threads[role].get("generate") or threads[role]["score"]
        actors = []
        for rank, where in enumerate(plan[role]):
            remote = ray.remote(cls).options(name=f"{job.metadata.name}-{role}-{rank}", namespace=NAMESPACE,
                                             **where.options(group))
            extra = {"rank": rank, "reward_url": spec.reward.url, "reward_timeout_s": spec.reward.timeout_seconds,
                     "broadcast_weights": transport == "broadcast"} if cls is RolloutWorker else {}
            if cls in FROZEN_ROLES:  # trained roles get their precision from DeepSpeed (TrainingSetup.bf16)
                extra["bf16"] = spec.training.bf16
            if cls is PolicyWorker:
                extra["lora"] = spec.policy.lora
            if trained:
                extra["threads"] = threads[role]
            actors.append(remote.remote(*args, cpus=cpus, seed=seed + rank, **extra))
        return WorkerGroup(role, actors, t.call_timeout_seconds)

    workers = RoleWorkers(
        policy=start("policy", PolicyWorker, models["policy"]),
        rollout=start("rollout", RolloutWorker, models["rollout"], spec.reward.function, inputs.rollout_engine,
                      spec.data.max_prompt_tokens + spec.rollout.max_new_tokens, spec.rollout.tensor_parallel_size,
                      # colocated with the trainer and taking turns with it: free the GPU memory while it trains
                      spec.resources.placement == "colocate" and not spec.rollout.one_step_off_policy),
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


def start_training_group(group: WorkerGroup, setup: TrainingSetup) -> list[ray.ObjectRef]:
    """Rank 0 names the rendezvous address; every rank then builds its engine (DeepSpeed joins the group)."""
    address, port = ray.get(group.actors[0].master_address.remote())
    world = len(group)
    return [actor.setup_training.remote(setup, rank, world, address, port) for rank, actor in enumerate(group.actors)]


def wait_until_ready(workers: RoleWorkers) -> None:
    """Block until every actor has loaded its model; a user error in a constructor surfaces here."""
    get_or_shut_down(workers, [actor.__ray_ready__.remote() for g in workers.groups() for actor in g.actors])


def get_or_shut_down(workers: RoleWorkers, refs: list[ray.ObjectRef]) -> list:
    """`ray.get`; on failure stop the job's actors, and raise a user's mistake behind it as the UserError."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as err:
        workers.shutdown()
        cause = user_error_in(err)
        if cause is not None:
            raise cause from None
        raise

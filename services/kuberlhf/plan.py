"""A valid spec compiled, once, into what a run needs: the roles its algorithm starts, where they run, and the
frozen runtime config of every part (sampling, the policy and critic updates, the advantages).

Pure and light (dataclasses, the spec and the registry; no torch, no Ray): the launcher, the online trainer, the
capacity check and the operator all read the same plan, instead of each reading the spec its own way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kuberlhf.algorithms.registry import Algorithm
from kuberlhf.spec import RLHFJobSpec
from kuberlhf.spec_online import DAPOSpec
from kuberlhf.workers.placement import ActorPlacement, phase_threads, plan_placement


@dataclass(frozen=True)
class SamplingParams:
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    top_p: float
    min_new_tokens: int = 0  # end-of-sequence is suppressed before this many tokens


@dataclass(frozen=True)
class PolicyUpdateConfig:
    epochs: int
    mini_batch_size: int | None  # each rank's share of a mini-batch; None: the whole batch
    clip_low: float | None  # None: no lower bound (cispo)
    clip_high: float
    dual_clip: float | None
    temperature: float
    kl_loss_coef: float  # 0 unless the KL is a loss term
    kl_estimator: str
    is_cap: float | None = None  # truncated importance sampling against the rollout engine's log-probs
    micro_batch_size: int | None = None  # sequences per forward/backward; None: the whole mini-batch
    loss: str = "ppo"  # the algorithm's policy loss: a key of algorithms.POLICY_LOSSES


@dataclass(frozen=True)
class CriticUpdateConfig:
    epochs: int
    mini_batch_size: int | None
    value_clip: float | None
    micro_batch_size: int | None = None


@dataclass(frozen=True)
class Overlong:
    """DAPO's soft overlong punishment: completions past `max_length - buffer` tokens lose up to `penalty`."""

    max_length: int
    buffer: int
    penalty: float


@dataclass(frozen=True)
class AdvantageConfig:
    estimator: str  # the descriptor's advantage: "gae" | "grpo" | "rloo" | "reinforce_pp"
    group_size: int
    kl_coef: float  # the starting coefficient; an adaptive KL target moves it (the trainer replaces it)
    kl_penalty: str  # "reward" | "loss"
    kl_estimator: str
    gamma: float
    gae_lambda: float
    scale_rewards: bool
    overlong: Overlong | None = None  # dapo
    only_groups_with_signal: bool = False  # dapo's dynamic sampling: uniform groups left out of the loss


@dataclass(frozen=True)
class JobPlan:
    """Everything a single-stage job's run is configured with, computed from its spec alone."""

    algorithm: Algorithm
    roles: tuple[str, ...]
    bundles: list[dict[str, float]]  # the placement group's
    placements: dict[str, list[ActorPlacement]]  # each role's actors, rank by rank
    threads: dict[str, dict[str, int]]  # torch threads of each role, by phase
    sampling: SamplingParams | None = None  # online only, as are the fields below
    prompts_sampled: int = 0  # prompts sampled per step (more than promptsPerStep when dapo over-samples)
    policy_update: PolicyUpdateConfig | None = None
    critic_update: CriticUpdateConfig | None = None
    advantages: AdvantageConfig | None = None


def compile_plan(spec: RLHFJobSpec) -> JobPlan:
    """The plan of a valid single-stage spec (a chained job is planned stage by stage)."""
    descriptor, roles = spec.descriptor, spec.roles
    bundles, placements = plan_placement(spec.resources, list(roles))
    if spec.is_offline:
        return JobPlan(descriptor, roles, bundles, placements, {})
    t, rollout = spec.training, spec.rollout
    threads = phase_threads(spec.resources, list(roles), rollout.one_step_off_policy, spec.recomputes_old_logprobs)
    clip_low, clip_high = spec.clip_range
    dapo = spec.settings if isinstance(spec.settings, DAPOSpec) else None
    return JobPlan(
        descriptor, roles, bundles, placements, threads,
        sampling=SamplingParams(rollout.samples_per_prompt, rollout.max_new_tokens, rollout.temperature,
                                rollout.top_p, rollout.min_new_tokens),
        prompts_sampled=math.ceil(t.prompts_per_step * dapo.oversample) if dapo and dapo.dynamic_sampling
        else t.prompts_per_step,
        policy_update=PolicyUpdateConfig(
            epochs=t.epochs_per_step, mini_batch_size=per_rank(t.mini_batch_size, spec.resources.policy.workers),
            clip_low=clip_low, clip_high=clip_high, dual_clip=t.dual_clip, temperature=rollout.temperature,
            kl_loss_coef=spec.kl_coef if spec.kl_penalty == "loss" else 0.0, kl_estimator=spec.kl_estimator,
            is_cap=t.is_correction.cap if t.is_correction else None, micro_batch_size=t.micro_batch_size,
            loss=descriptor.policy_loss),
        critic_update=CriticUpdateConfig(t.epochs_per_step, per_rank(t.mini_batch_size, spec.resources.critic.workers),
                                         t.value_clip, t.micro_batch_size) if "critic" in roles else None,
        advantages=AdvantageConfig(
            estimator=descriptor.advantage or "", group_size=rollout.samples_per_prompt, kl_coef=spec.kl_coef,
            kl_penalty=spec.kl_penalty, kl_estimator=spec.kl_estimator, gamma=t.gamma, gae_lambda=t.gae_lambda,
            scale_rewards=t.scale_rewards,
            overlong=Overlong(rollout.max_new_tokens, dapo.overlong_buffer, dapo.overlong_penalty)
            if dapo is not None and dapo.overlong_buffer > 0 else None,
            only_groups_with_signal=dapo is not None and dapo.dynamic_sampling),
    )


def per_rank(mini_batch_size: int | None, ranks: int) -> int | None:
    """Each rank's share of a mini-batch (the spec guarantees it divides)."""
    return mini_batch_size // ranks if mini_batch_size else None

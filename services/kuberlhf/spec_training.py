"""Spec sections of optimisation and resources (`training`, `resources`); `kuberlhf.spec` assembles them into the
job. Light like `spec.py` (the operator imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kuberlhf.spec_base import SpecModel
from kuberlhf.spec_online import ISCorrectionSpec, KLSpec


class TrainingSpec(SpecModel):
    """Optimisation settings."""

    steps: int = Field(default=100, ge=1)
    """Online: policy updates (each: sample, score, update). Offline: when set, stop after this many
    optimizer steps even if `epochs` are not done."""
    epochs: int = Field(default=1, ge=1)
    """Offline algorithms: passes over `data.train`."""
    batch_size: int = Field(default=8, ge=1)
    """Offline algorithms: examples per optimizer step (pairs for rm and dpo), split over the policy's
    workers."""
    prompts_per_step: int = Field(default=16, ge=1)
    """Prompts sampled from the train set per step; the batch is promptsPerStep x samplesPerPrompt."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Policy AdamW learning rate."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """The learning rate over the run's optimizer steps: `constant`, or decaying to zero at the end, in a
    straight line (`linear`, the default of TRL and transformers' Trainer) or along a half cosine
    (`cosine`). Applies to the policy and the critic."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Share of the run's optimizer steps over which the learning rate first rises linearly from 0."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient norm clipping."""
    epochs_per_step: int = Field(default=1, ge=1)
    """Passes over each step's batch (PPO epochs)."""
    mini_batch_size: int | None = Field(default=None, ge=1)
    """Sequences per optimiser step; must divide the batch. Default: the whole batch (one update per epoch)."""
    micro_batch_size: int | None = Field(default=None, ge=1)
    """Sequences per forward/backward pass on one worker (gradient accumulation): each mini-batch's share on
    a worker is processed this many sequences at a time, with the gradient of the whole mini-batch. Must
    divide that share. Default: the whole share in one pass."""
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Seed for prompt order, sampling and initialisation."""
    kl: KLSpec = Field(default_factory=KLSpec)
    """KL regulariser settings."""
    clip_ratio_low: float | None = Field(default=None, gt=0, lt=1)
    """The importance ratio is clipped below at 1 - clipRatioLow (per token; per sequence for gspo; cispo bounds
    its weight). Default: the algorithm's (docs/algorithms.md): 0.2; gspo 3e-4; cispo none."""
    clip_ratio_high: float | None = Field(default=None, gt=0)
    """The ratio is clipped above at 1 + clipRatioHigh. Default: the algorithm's: 0.2; dapo 0.28 (clip-higher);
    gspo 4e-4; cispo 4 (the weight is at most 5)."""
    dual_clip: float | None = Field(default=None, gt=1)
    """Dual-clip PPO (Ye et al. 2020): bound the loss of negative-advantage tokens at dualClip x |A| (algorithms
    with PPO's token clip: not gspo or cispo)."""
    value_clip: float | None = Field(default=0.2, gt=0)
    """Clip the critic's new values to old +- valueClip (PPO only); null turns it off."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount factor (GAE, REINFORCE++)."""
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    """GAE lambda (PPO)."""
    scale_rewards: bool = True
    """GRPO: divide group-centred rewards by the group's standard deviation (false = Dr. GRPO)."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage for the trained roles (policy, critic): 1 shards optimizer state, 2 also
    gradients, 3 also parameters across the role's workers. 0 with one worker is plain PyTorch; roles with
    several workers always train with DeepSpeed (stage 0 = plain data parallel)."""
    offload_optimizer: bool = False
    """ZeRO-Offload: keep optimizer state in CPU memory (DeepSpeed's CPU Adam; compiled on first use)."""
    offload_params: bool = False
    """ZeRO-Infinity parameter offload to CPU memory (needs zeroStage 3)."""
    bf16: bool = False
    """Train in bfloat16 under DeepSpeed (GPUs, or CPUs with AVX512-BF16; float32 otherwise)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    is_correction: ISCorrectionSpec | None = None
    """Correct the train-inference mismatch with truncated importance sampling; null = off."""
    eval_every_steps: int = Field(default=0, ge=0)
    """Score `data.eval` every N steps and at the last (0 = at the last only), into metrics.jsonl
    (`eval/reward_mean`, or `eval/loss` offline); an online run also scores it before its first step
    (summary.json's `eval/reward_mean_start`)."""
    max_restarts: int = Field(default=2, ge=0)
    """When a worker dies (its process killed, its node lost), the job rebuilds every worker (the online
    actors, or an offline stage's Ray Train workers) from the newest checkpoint and goes on, at most this many
    times; then it fails with the reason. A user error is never retried."""
    call_timeout_seconds: float = Field(default=1800, gt=0)
    """The longest any one worker call may take (generation, scoring, an update, a weight sync, and the
    collectives inside them). A call past it names the role, rank and call, and the job replaces its workers
    from the newest checkpoint (`maxRestarts`), as for a worker that died."""
    max_non_finite_steps: int = Field(default=3, ge=1)
    """An update whose loss or gradient norm is NaN or infinite is skipped (the weights stay as they were) and
    counted (`kuberlhf_nonfinite_steps_total`); this many such steps in a row write a checkpoint and end the
    job as failed with that reason."""


class RoleResources(SpecModel):
    """Resources of one role's workers."""

    workers: int = Field(default=1, ge=1)
    """Ray actors of this role."""
    cpus: float = Field(default=1.0, gt=0)
    """CPUs per worker (also its torch thread count, at least 1)."""
    gpus: float = Field(default=0.0, ge=0)
    """GPUs per worker (fractions share a GPU)."""


class ResourcesSpec(SpecModel):
    """Where the roles run."""

    placement: Literal["colocate", "separate"] = "colocate"
    """`colocate`: all roles share one set of placement-group bundles (they share CPUs/GPUs);
    `separate`: each role gets bundles of its own."""
    policy: RoleResources = Field(default_factory=RoleResources)
    """Policy trainer workers."""
    reference: RoleResources = Field(default_factory=RoleResources)
    """Reference model workers."""
    reward: RoleResources = Field(default_factory=RoleResources)
    """Reward model / reward function workers."""
    critic: RoleResources = Field(default_factory=RoleResources)
    """Critic workers (PPO)."""
    rollout: RoleResources = Field(default_factory=RoleResources)
    """Rollout (generation) workers; prompts are split across them."""

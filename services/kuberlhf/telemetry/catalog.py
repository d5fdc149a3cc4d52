"""Every Prometheus metric a job exports: the one list the exporter, the Grafana dashboard check, the alert
rules' tests and docs/observability.md are read from.

A step's metrics (the keys of a metrics.jsonl line) become gauges named here; every series also carries the
labels `job`, `namespace`, `stage` and `algorithm`. Worker actors export theirs through Ray's metrics
(`RAY_METRICS`), which Ray's own endpoint serves with the prefix `ray_`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

JOB_LABELS = ("job", "namespace", "stage", "algorithm")
# A NaN or infinity in one of these means the step's update was broken (and skipped by the engine).
HEALTH_KEYS = ("policy/loss", "critic/value_loss", "loss", "policy/grad_norm", "critic/grad_norm", "grad_norm")


@dataclass(frozen=True)
class StepMetric:
    """A gauge fed by one key of a step's metrics; `labels` tell apart several keys sharing one name."""

    name: str
    key: str
    help: str
    labels: dict[str, str] = field(default_factory=dict)


def _phase(phase: str) -> StepMetric:
    return StepMetric("kuberlhf_phase_seconds", f"time/{phase}", "Seconds of the last step spent in a phase "
                      "(label phase; see PHASES)", {"phase": phase})


PHASES = {  # what each `phase` label of kuberlhf_phase_seconds times
    "generation": "waiting for the rollout workers' samples (and reward-function scores)",
    "scoring": "reference, reward model, critic and old log-probs, concurrently",
    "reference": "until the reference log-probs were in (within scoring)",
    "reward": "until the reward model's scores were in (within scoring)",
    "critic": "until the critic's values were in (within scoring)",
    "old_logprobs": "until the old policy's log-probs were in (within scoring)",
    "training": "policy and critic updates",
    "policy_update": "the policy update on its workers",
    "critic_update": "the critic update on its workers",
    "weight_sync": "the previous update's weight sync, until the last engine held the weights (timed in the workers)",
    "evaluation": "sampling and scoring the held-out prompts (steps that evaluate)",
    "checkpoint": "writing a checkpoint",
}

STEP_METRICS: tuple[StepMetric, ...] = (
    StepMetric("kuberlhf_reward_mean", "reward/mean", "Mean reward of the step's samples"),
    StepMetric("kuberlhf_reward_std", "reward/std", "Standard deviation of the step's rewards"),
    StepMetric("kuberlhf_reward_min", "reward/min", "Lowest reward of the step"),
    StepMetric("kuberlhf_reward_max", "reward/max", "Highest reward of the step"),
    StepMetric("kuberlhf_reward_length_correlation", "reward/length_correlation",
               "Pearson correlation of response length and reward within the step"),
    StepMetric("kuberlhf_eval_reward_mean", "eval/reward_mean", "Mean reward on the held-out prompts"),
    StepMetric("kuberlhf_kl", "kl/sequence", "KL(policy || reference) per sequence, nats (k1 estimate)"),
    StepMetric("kuberlhf_kl_token", "kl/token", "KL(policy || reference) per response token, nats"),
    StepMetric("kuberlhf_kl_coef", "kl/coef", "KL coefficient in use (changes with an adaptive KL target)"),
    StepMetric("kuberlhf_entropy", "policy/entropy", "Mean per-token entropy of the policy on its samples"),
    StepMetric("kuberlhf_response_length_mean", "response_length/mean", "Mean response length, tokens"),
    StepMetric("kuberlhf_response_length_max", "response_length/max", "Longest response, tokens"),
    StepMetric("kuberlhf_policy_loss", "policy/loss", "Policy loss"),
    StepMetric("kuberlhf_value_loss", "critic/value_loss", "Critic (value) loss"),
    StepMetric("kuberlhf_clip_fraction", "policy/clip_fraction", "Fraction of tokens whose ratio was clipped"),
    StepMetric("kuberlhf_approx_kl", "policy/approx_kl", "Approximate KL between the old and the updated policy"),
    StepMetric("kuberlhf_ratio_mean", "policy/ratio_mean",
               "Mean importance ratio new/old policy over the update (per sequence for gspo)"),
    StepMetric("kuberlhf_dual_clip_fraction", "policy/dual_clip_fraction",
               "Fraction of tokens whose loss the dual clip bounded (training.dualClip)"),
    StepMetric("kuberlhf_explained_variance", "critic/explained_variance",
               "1 - Var(returns - values) / Var(returns) of the critic's values (1 = perfect, <= 0 = no better "
               "than a constant)"),
    StepMetric("kuberlhf_groups_kept", "dapo/groups_kept",
               "dapo: groups of the step whose rewards differ (the others are left out of the loss)"),
    StepMetric("kuberlhf_groups_sampled", "dapo/groups_sampled",
               "dapo: groups sampled in the step (promptsPerStep x oversample) to choose the trained ones from"),
    StepMetric("kuberlhf_overlong_penalty", "reward/overlong_penalty",
               "dapo: mean reward the overlong shaping took off the step's samples"),
    StepMetric("kuberlhf_advantages_mean", "advantages/mean", "Mean advantage over response tokens"),
    StepMetric("kuberlhf_advantages_std", "advantages/std", "Standard deviation of the advantages"),
    StepMetric("kuberlhf_learning_rate", "policy/lr", "Learning rate", {"role": "policy"}),
    StepMetric("kuberlhf_learning_rate", "lr", "Learning rate", {"role": "model"}),
    StepMetric("kuberlhf_grad_norm", "policy/grad_norm", "Gradient norm before clipping", {"role": "policy"}),
    StepMetric("kuberlhf_grad_norm", "critic/grad_norm", "Gradient norm before clipping", {"role": "critic"}),
    StepMetric("kuberlhf_grad_norm", "grad_norm", "Gradient norm before clipping", {"role": "model"}),
    StepMetric("kuberlhf_rollout_mismatch_kl", "rollout/mismatch_kl",
               "KL between the rollout engine's and the trainer's log-probs of the same samples"),
    StepMetric("kuberlhf_rollout_weight_version", "rollout/weight_version",
               "Policy updates behind the weights the last batch was sampled with"),
    StepMetric("kuberlhf_sync_probe_logprob_diff", "sync/probe_logprob_diff",
               "Mean absolute log-prob difference between the trainer and the rollout engines on the probe after "
               "the last weight sync (nats per token)"),
    StepMetric("kuberlhf_tokens_per_second", "throughput/tokens_per_second", "Tokens processed per second"),
    StepMetric("kuberlhf_samples_per_second", "throughput/samples_per_second", "Samples processed per second"),
    StepMetric("kuberlhf_step_seconds", "time/step", "Wall time of the last step"),
    *(_phase(phase) for phase in PHASES),
    StepMetric("kuberlhf_loss", "loss", "Training loss of an offline stage (sft, rm, dpo, kto)"),
    StepMetric("kuberlhf_accuracy", "accuracy", "Preference accuracy of an offline stage (rm, dpo, kto)"),
    StepMetric("kuberlhf_margin", "margin", "Mean chosen-minus-rejected margin of an offline stage"),
    StepMetric("kuberlhf_eval_loss", "eval/loss", "Held-out loss of an offline stage"),
    StepMetric("kuberlhf_eval_accuracy", "eval/accuracy", "Held-out accuracy of an offline stage"),
)

# Set by the exporter itself, not from a step's metrics.
OWN_METRICS: dict[str, str] = {
    "kuberlhf_step": "Steps done",
    "kuberlhf_steps_total": "Steps the job (stage) will run",
    "kuberlhf_last_step_timestamp_seconds": "Unix time the last step finished",
    "kuberlhf_nonfinite_steps_total": "Steps whose loss or gradient norm was NaN or infinite",
    "kuberlhf_reward_hacking_suspected": "1 while a reward-hacking or stability signal holds (label signal)",
}

# Exported by worker actors through ray.util.metrics; Ray's endpoint adds the prefix `ray_`.
RAY_METRICS: dict[str, str] = {
    "kuberlhf_worker_memory_bytes": "Memory of a worker actor (labels role, rank, device: cpu RSS or cuda peak)",
    "kuberlhf_worker_call_seconds": "Duration of a worker's last batch call (labels role, rank, method)",
}


def exported_names() -> set[str]:
    """Every metric name a job can export, as Prometheus sees it (Ray's with their `ray_` prefix)."""
    return ({m.name for m in STEP_METRICS} | set(OWN_METRICS)
            | {f"ray_{name}" for name in RAY_METRICS})

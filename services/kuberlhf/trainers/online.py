"""The online RL driver (PPO and the critic-free family: GRPO, RLOO, REINFORCE++, GSPO, DAPO, CISPO): one controller
calling worker groups; what differs between algorithms comes from their descriptor (algorithms/registry.py).

Each step reads like a single-process program:
  sample prompts -> generate (+ reward function) -> {reference log-probs, reward model, values, old log-probs}
  concurrently
  -> advantages (pure functions) -> policy (and critic) update concurrently -> sync weights to rollout
  -> log, evaluate, checkpoint.
The next step's generation is queued right behind the weight sync, so no driver round trip sits between
them; with `rollout.oneStepOffPolicy` it starts before the update instead and overlaps with training.
Distribution lives in `workers/`, numerics in `algorithms/`; nothing here touches a model.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from kuberlhf.algorithms import adaptive_kl_coef, pick_groups
from kuberlhf.data.batch import RolloutBatch
from kuberlhf.data.prompts import PromptDataset
from kuberlhf.data.sampler import PromptSampler
from kuberlhf.errors import Interrupted, JobStopped, WeightSyncError
from kuberlhf.reward_functions import TrainerState
from kuberlhf.plan import SamplingParams, compile_plan
from kuberlhf.spec import RLHFJob
from kuberlhf.telemetry.job_status import status_reporter
from kuberlhf.telemetry.monitor import RewardHackingMonitor
from kuberlhf.telemetry.run_log import PhaseTimer, StepDisplay, StepLog, sample_records
from kuberlhf.telemetry.step_sink import StepSink
from kuberlhf.trainers.heldout import heldout_rollout
from kuberlhf.telemetry.tracking import tracking_of
from kuberlhf.storage.checkpoints import Checkpoint
from kuberlhf.trainers.lifecycle import (
    RunStorage,
    StopRequest,
    restore_checkpoint,
    save_checkpoint,
    save_final_model,
)
from kuberlhf.trainers.experience import make_experience
from kuberlhf.trainers.guards import NonFiniteGuard
from kuberlhf.workers.group import Pending, gather_timed
from kuberlhf.workers.launch import RoleWorkers
from kuberlhf.workers.weight_sync import SyncInFlight


def train(job: RLHFJob, workers: RoleWorkers, train_data: PromptDataset, eval_data: PromptDataset | None,
          display: StepDisplay, run: RunStorage, resume_from: Checkpoint | None = None,
          exporter: Any | None = None, stop_request: StopRequest | None = None) -> dict[str, Any]:
    spec, t = job.spec, job.spec.training
    output_dir = Path(job.output_dir)
    plan = compile_plan(spec)
    sampling, policy_config, critic_config = plan.sampling, plan.policy_update, plan.critic_update
    one_step_off_policy = spec.rollout.one_step_off_policy
    recompute_old_logprobs = spec.recomputes_old_logprobs

    sampler = PromptSampler(len(train_data), plan.prompts_sampled, t.seed)
    monitor, guard = RewardHackingMonitor(spec.monitor), NonFiniteGuard(t.max_non_finite_steps)
    kl_coef, first_step = spec.kl_coef, 1
    trained, weight_sync = trained_groups(workers), workers.weight_sync
    if resume_from is not None:
        state = resume_from.state
        restore_checkpoint(run, trained, resume_from)
        sampler.load_state(state["sampler"])
        kl_coef, first_step = state["kl_coef"], resume_from.step + 1
        monitor.load_state(state["monitor"])
        weight_sync.sync_now(resume_from.step)
        display.note(f"resuming from {run.storage.checkpoints.storage.describe(resume_from.name)} "
                     f"(step {resume_from.step})")
    elif spec.policy.lora is not None and spec.policy.lora.quantize:  # QLoRA: the engines loaded the model
        weight_sync.sync_now(0)  # unquantized
    samples_every = spec.logging.samples_every_steps
    samples = StepLog(output_dir / "samples.jsonl", first_step - 1, sort_keys=False) if samples_every else None
    evals: dict[str, float] = {}
    if eval_data is not None and first_step == 1:
        evals["eval/reward_mean_start"] = monitor.eval_start = evaluate(workers, eval_data, sampling, t.seed,
                                                                        TrainerState(0, t.steps))

    def start_generation(step: int, updates_done: int) -> tuple[Pending, dict[str, int]]:
        """Send step `step`'s prompts to the rollout workers; returns at once. `updates_done` (the policy
        updates behind the sampling weights) is the reward functions' `trainer_state.global_step`."""
        prompts, columns = train_data.select(sampler.next_indices())
        pending = workers.rollout.map_batch("generate", prompts, sampling, t.seed * 100_003 + step,
                                            TrainerState(updates_done, t.steps), columns=columns)
        return pending, sampler.state()

    reporter = status_reporter(t.steps, first_step, job.metadata.labels)
    metrics_log = StepLog(output_dir / "metrics.jsonl", first_step - 1, tracking=tracking_of(job))
    sink = StepSink(metrics_log, exporter, reporter, monitor, display.note)
    started = time.perf_counter()
    weights_synced: SyncInFlight | None = None
    metrics_of_last_sync: dict[str, float] = {}
    with display, metrics_log:  # the trackers' runs end with the loop, as failed if it raised
        next_generation = start_generation(first_step, first_step - 1)
        for step in range(first_step, t.steps + 1):
            timer, step_started = PhaseTimer(), time.perf_counter()

            with timer("generation"):
                pending, sampler_state = next_generation
                rollout: RolloutBatch = pending.get()
            if weights_synced is not None:  # done by now: the rollout worker loads weights before it samples
                metrics_of_last_sync = weight_sync.finish(weights_synced)
            check_weight_version(rollout, step, first_step, one_step_off_policy)
            if one_step_off_policy and step < t.steps:  # the next batch samples while this one trains
                next_generation = start_generation(step + 1, step - 1)

            with timer("scoring"):  # reference, reward model, critic (and old policy) run concurrently
                scored, finished = gather_timed({
                    "reference": workers.reference.map_batch("compute_logprobs", rollout, sampling.temperature)
                    if workers.reference else None,
                    "reward": workers.reward.map_batch("score", rollout) if workers.reward else None,
                    "critic": workers.critic.map_batch("compute_values", rollout) if workers.critic else None,
                    "old_logprobs": workers.policy.map_batch("compute_logprobs", rollout, sampling.temperature)
                    if recompute_old_logprobs else None,
                })
            ref_logprobs, values, old_logprobs = scored["reference"], scored["critic"], scored["old_logprobs"]
            scores = scored["reward"] if workers.reward else rollout.scores  # a reward function scored at sampling
            if one_step_off_policy:  # the ratio is taken against the policy that sampled the batch
                old_logprobs = rollout.rollout_logprobs
            sampled = {}
            if plan.prompts_sampled > t.prompts_per_step:  # dapo: train on the groups with a reward signal first
                sampled = {"dapo/groups_sampled": float(plan.prompts_sampled),
                           "dapo/reward_mean_sampled": float(scores.mean())}
                rows = pick_groups(scores, sampling.samples_per_prompt, t.prompts_per_step)
                rollout, scores, ref_logprobs, values, old_logprobs = select_rows(
                    rows, rollout, scores, ref_logprobs, values, old_logprobs)

            advantage_config = dataclasses.replace(plan.advantages, kl_coef=kl_coef)  # adaptive KL moves it
            experience, metrics = make_experience(advantage_config, rollout, scores, ref_logprobs, old_logprobs, values)
            metrics.update(finished)
            metrics.update(sampled)
            metrics["rollout/weight_version"] = float(rollout.weight_version)
            if rollout.reward_log is not None:  # what the reward function logged (TRL's log_metric)
                metrics.update(rollout.reward_log.metric_means())
            if samples is not None and step % samples_every == 0:
                written = sample_records(step, rollout, scores, spec.logging.samples_per_step)
                for record in written:
                    samples.write(record)
                metrics_log.track_samples(step, written)

            metrics.update(metrics_of_last_sync)
            with timer("training"):  # policy and critic update concurrently; the weight sync is queued behind
                policy_update = workers.policy.map_batch("update", experience, policy_config)
                critic_update = workers.critic.map_batch("update", experience, critic_config) if workers.critic else None
                weights_synced = weight_sync.start(step)
                if not one_step_off_policy and step < t.steps:  # queued behind the sync: samples with new weights
                    next_generation = start_generation(step + 1, step)
                metrics.update(policy_update.get())
                metrics.update(critic_update.get() if critic_update else {})

            if t.kl.target is not None:
                kl_coef = adaptive_kl_coef(kl_coef, metrics["kl/sequence"], t.kl.target, t.kl.horizon, len(rollout))
            if eval_data is not None and (step == t.steps or t.eval_every_steps and step % t.eval_every_steps == 0):
                with timer("evaluation"):  # the rollout engines load this update's weights before they sample
                    metrics["eval/reward_mean"] = evaluate(workers, eval_data, sampling, t.seed,
                                                           TrainerState(step, t.steps))
                if step == t.steps:
                    evals["eval/reward_mean_end"] = metrics["eval/reward_mean"]
            trainer_state = {"sampler": sampler_state, "kl_coef": kl_coef, "monitor": monitor.state()}
            saved = None
            if spec.checkpoint.every_steps and step % spec.checkpoint.every_steps == 0:
                with timer("checkpoint"):
                    saved = save_checkpoint(run, trained, step, trainer_state)

            metrics.update(timer.seconds)
            metrics.update(throughput(rollout, time.perf_counter() - step_started))
            broken = guard.observe(step, metrics)  # a non-finite update was skipped by the engines
            signals = sink.record(step, metrics)
            display.update(step, metrics)
            if signals and spec.monitor.action == "stop":
                evidence = "; ".join(f"{s.name}: {s.evidence}" for s in signals)
                stop(f"stopped by spec.monitor (action: stop) at step {step}: {evidence}", run, trained, step,
                     trainer_state)
            if broken:
                stop(broken, run, trained, step, trainer_state)
            if stop_request is not None and stop_request.requested and step < t.steps:
                if weights_synced is not None:
                    weight_sync.finish(weights_synced)
                saved = saved or save_checkpoint(run, trained, step, trainer_state)
                raise Interrupted(f"SIGTERM: stopped after step {step}; its checkpoint "
                                  f"{run.storage.checkpoints.storage.describe(saved.name)} is saved, and running "
                                  "the job again continues from it")

    if weights_synced is not None:
        weight_sync.finish(weights_synced)  # surface a failed last sync
    final_model = save_final_model(run, workers.policy, spec.output.merge_lora,
                                   {"job": job.metadata.name, "algorithm": spec.algorithm, "step": t.steps})
    return {"final_model": str(final_model), "metrics_file": str(sink.metrics_file.path), "eval": evals,
            "train_seconds": time.perf_counter() - started, "first_step": first_step}


def check_weight_version(rollout: RolloutBatch, step: int, first_step: int, one_step_off_policy: bool) -> None:
    """Step `step`'s batch must come from the weights after update step - 1 (step - 2 one step off policy, or
    the checkpoint's on the first step after a resume): anything else is a sync that did not arrive."""
    expected = max(step - 2, first_step - 1) if one_step_off_policy else step - 1
    if rollout.weight_version != expected:
        raise WeightSyncError(f"step {step} was sampled with the weights of policy update {rollout.weight_version}, "
                              f"not {expected}: a weight sync did not reach the rollout engines")


def select_rows(rows: list[int], rollout: RolloutBatch, *tensors: Any) -> tuple[Any, ...]:
    """The rollout and its per-row tensors (None where a role did not run) restricted to `rows`."""
    return (rollout.select(rows), *(None if tensor is None else tensor[rows] for tensor in tensors))


def evaluate(workers: RoleWorkers, data: PromptDataset, sampling: SamplingParams, seed: int,
             state: TrainerState) -> float:
    """Mean reward of sampled completions on held-out prompts (same sampling settings as training; what
    `kuberlhf eval` computes too)."""
    _, scores = heldout_rollout(workers, data, sampling, seed, state)
    return float(scores.mean())


def throughput(rollout: RolloutBatch, seconds: float) -> dict[str, float]:
    """The step's wall time, and samples and tokens (prompt and response) per second of it."""
    tokens = float(rollout.prompt_mask.sum()) + float(rollout.response_lengths().sum())
    return {"time/step": seconds, "throughput/samples_per_second": len(rollout) / seconds,
            "throughput/tokens_per_second": tokens / seconds}


def trained_groups(workers: RoleWorkers) -> dict[str, Any]:
    """The roles whose weights and optimizer state a checkpoint holds."""
    return {"policy": workers.policy, **({"critic": workers.critic} if workers.critic else {})}


def stop(reason: str, run: RunStorage, trained: dict[str, Any], step: int, state: dict[str, Any]) -> None:
    """End the job as failed on purpose (the monitor's `stop`, too many non-finite updates), after a checkpoint
    marked as a stop's (pruning keeps the last one from before it)."""
    saved = save_checkpoint(run, trained, step, state, stopped=reason)
    where = run.storage.checkpoints.storage.describe(saved.name)
    raise JobStopped(f"{reason}. The checkpoint {where} holds this step; inspect it, then resume with other "
                     f"settings, or delete it to start over from the one before")

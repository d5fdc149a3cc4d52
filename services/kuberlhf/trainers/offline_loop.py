"""The training function of the offline stages (sft, rm, dpo, kto), run by every Ray Train worker.

Reads top to bottom like a single-process trainer: build the model and its engine, restore the checkpoint
the driver found (`resume_from`), then for each epoch and each batch: take this rank's share, compute the
algorithm's loss micro-batch by micro-batch, step, log, and now and then checkpoint (atomically, as the online
algorithms do: `storage/checkpoints.py`). Reference log-probs
were computed once before training (`Examples` + `ReferenceLogprobs`), never by a second model in here.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kuberlhf.algorithms.preference import (
    dpo_loss,
    kto_kl_baseline,
    kto_loss,
    reward_model_loss,
    sequence_logprobs,
    sft_loss,
)
from kuberlhf.algorithms.registry import ALGORITHMS
from kuberlhf.data.examples import Examples, make_batch
from kuberlhf.data.packing import packed_batch, packed_logprobs
from kuberlhf.engines.training import TrainingSetup, make_training_engine
from kuberlhf.errors import Interrupted, JobStopped
from kuberlhf.models.forward import response_logprobs
from kuberlhf.models.reward import sequence_rewards
from kuberlhf.telemetry.job_status import status_reporter
from kuberlhf.telemetry.console import say
from kuberlhf.telemetry.run_log import RemoteStepLog
from kuberlhf.telemetry.step_sink import StepSink
from kuberlhf.telemetry.tracking import Tracking
from kuberlhf.storage.checkpoints import FINAL, Checkpoint, checkpoint_name
from kuberlhf.storage.transfer import StorageTarget, deliver, fetch
from kuberlhf.trainers.guards import NonFiniteGuard
from kuberlhf.engines.process import configure_process, worker_device

EVAL_FILE = "eval.json"  # the final evaluation, for the run summary


@dataclass(frozen=True)
class Split:
    """A tokenized dataset and the reference model's sequence log-prob sums of its completions:
    chosen / rejected (dpo), completion / kl (kto), none (sft, rm)."""

    examples: Examples
    reference: dict[str, torch.Tensor]
    packs: list[list[int]] | None = None  # sft.packing: the examples of each packed sequence

    @property
    def size(self) -> int:
        """What a batch is drawn from: examples, or packed sequences."""
        return len(self.packs) if self.packs is not None else len(self.examples)

    def examples_of(self, indices: list[int]) -> list[int]:
        return [i for index in indices for i in self.packs[index]] if self.packs is not None else indices


@dataclass(frozen=True)
class OfflineConfig:
    """Everything a worker needs; built by the driver (trainers/offline.py) from the spec."""

    algorithm: str
    model_path: str
    setup: TrainingSetup
    batch_size: int
    epochs: int
    max_steps: int | None
    seed: int
    cpus: float
    checkpoint_every: int
    checkpoints: StorageTarget  # where every rank writes its part of a checkpoint (storage/transfer.py)
    outputs: StorageTarget  # where rank 0 writes final/
    keep: int  # checkpoint.keep
    fingerprint: dict[str, Any]  # recorded in each checkpoint (storage/fingerprint.py)
    driver_files: Any  # a DriverFiles actor: metrics.jsonl and eval.json in the driver's output directory
    pad_token_id: int
    lora: Any  # the job's policy.lora, or None
    merge_lora: bool
    train: Split
    evaluation: Split | None  # data.eval: scored every eval_every steps and at the end
    eval_every: int
    exporter: Any = None  # the job's metrics server (a Ray actor handle), fed by rank 0
    max_non_finite_steps: int = 3
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    job_labels: dict[str, str] = field(default_factory=dict)  # the stage label names a chain's stage
    tracking: Tracking | None = None  # logging.reportTo: trackers fed from metrics.jsonl on the driver
    resume_from: Checkpoint | None = None  # the newest complete checkpoint when the run (re)starts

    @property
    def steps_per_epoch(self) -> int:
        return self.train.size // self.batch_size

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total


def train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train

    config: OfflineConfig = loop_config["config"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    configure_process(config.cpus, config.seed + rank)
    device = worker_device()
    model = load_trained_model(config, device)
    if config.setup.uses_deepspeed(world):
        from kuberlhf.engines.deepspeed_engine import join_existing_group

        join_existing_group()
    engine = make_training_engine(model, config.setup, world)
    step = restore(engine, config)
    sink = StepSink(RemoteStepLog(config.driver_files, "metrics.jsonl", step, config.tracking),
                    config.exporter, status_reporter(config.total_steps, step + 1, config.job_labels)
                    ) if rank == 0 else None
    share = config.batch_size // world
    guard = NonFiniteGuard(config.max_non_finite_steps)  # every rank sees the same (averaged) metrics
    stop_poll = StopPoll(config.driver_files, rank, world)
    while step < config.total_steps:
        started = time.perf_counter()
        epoch, index = divmod(step, config.steps_per_epoch)
        order = torch.randperm(config.train.size, generator=torch.Generator().manual_seed(config.seed + epoch))
        batch = order[index * config.batch_size : (index + 1) * config.batch_size].tolist()
        mine = batch[rank * share : (rank + 1) * share]
        torch.manual_seed(config.seed + 1_000_003 * rank + step)  # dropout as in an uninterrupted run
        model.train()
        learning_rate = engine.learning_rate  # this step's (the schedule moves on in train_step)
        metrics = train_step(engine, config, mine, device)
        step += 1
        seconds = time.perf_counter() - started
        metrics = {**average_over_ranks(metrics, world), "epoch": epoch + 1, "lr": learning_rate,
                   "time/step": seconds, "throughput/samples_per_second": len(batch) / seconds,
                   "throughput/tokens_per_second": tokens_in(config.train, batch) / seconds}
        if config.evaluation is not None and (step == config.total_steps or
                                              (config.eval_every and step % config.eval_every == 0)):
            metrics.update(evaluate(engine, config, device, rank, world))
        broken = guard.observe(step, metrics)
        if sink is not None:
            sink.record(step, metrics)
            say(f"step {step}/{config.total_steps}  loss {metrics['loss']:.4f}"
                + (f"  accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else ""))
        terminated = stop_poll.requested() and step < config.total_steps
        if sink is not None and (broken or terminated or step == config.total_steps):
            sink.metrics_file.flush()  # every record is in metrics.jsonl before the driver reads it
        if broken or terminated or (config.checkpoint_every and step % config.checkpoint_every == 0):
            save_checkpoint(engine, config, step, rank, world, stopped=broken)
        if broken:
            raise JobStopped(f"{broken}. A checkpoint of this step was written (spec.checkpoint.dir); run the job "
                             f"again with other settings to continue from it")
        if terminated:
            raise Interrupted(f"SIGTERM: stopped after step {step}; its checkpoint {checkpoint_name(step)} is saved, "
                              "and running the job again continues from it")
    if rank == 0 and config.evaluation is not None:
        final_eval = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        ray.get(config.driver_files.write_text.remote(EVAL_FILE, json.dumps(final_eval, indent=2)))
    save_final(engine, model, config, rank)


def load_trained_model(config: OfflineConfig, device: torch.device) -> torch.nn.Module:
    from kuberlhf.models.loading import load_policy, new_reward_model

    if config.algorithm == "rm":
        return new_reward_model(config.model_path, config.pad_token_id).to(device)
    return load_policy(config.model_path, config.lora, device)


def train_step(engine: Any, config: OfflineConfig, indices: list[int], device: torch.device) -> dict[str, float]:
    """One optimizer step over this rank's examples, `micro_batch_size` at a time; each micro-batch's loss is
    weighted by its share of the examples (its share of target tokens for sft). With sft packing, `indices`
    are packed sequences."""
    micro = config.setup.micro_batch_size
    parts = [indices[start : start + micro] for start in range(0, len(indices), micro)]
    weights = [len(part) / len(indices) for part in parts]
    if config.algorithm == "sft":
        tokens = [sum(len(config.train.examples.completions[i]) for i in config.train.examples_of(part))
                  for part in parts]
        weights = [count / sum(tokens) for count in tokens]
    kl_baseline = kto_reference_point(engine, config, config.train, indices, device) if config.algorithm == "kto" \
        else None
    means = WeightedMeans()
    for part, weight in zip(parts, weights):
        loss, stats = algorithm_loss(engine.forward_module, config, config.train, part, device, kl_baseline)
        engine.accumulate(loss * weight)
        means.add({"loss": loss.detach(), **stats}, weight)
    return {**means.result(), "grad_norm": engine.step()}


class WeightedMeans:
    """Weighted means of micro-batch statistics; a NaN (a KTO micro-batch without one kind of completion)
    is left out of its statistic instead of spoiling it."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, stats: dict[str, Any], weight: float) -> None:
        for key, value in stats.items():
            value = float(value)
            if math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value * weight
                self.weights[key] = self.weights.get(key, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {key: total / self.weights[key] for key, total in self.sums.items()}


LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]


def algorithm_loss(model: Any, config: OfflineConfig, split: Split, part: list[int], device: torch.device,
                   kl_baseline: torch.Tensor | None) -> LossOutput:
    """The stage's loss on the examples `part` of `split`: the function its descriptor names."""
    if split.packs is not None:  # sft packing: `part` lists packed sequences
        batch = packed_batch(split.examples, [split.packs[i] for i in part], config.pad_token_id).to(device)
        return sft_loss(*packed_logprobs(model, batch)), {}
    loss = OFFLINE_LOSSES[ALGORITHMS[config.algorithm].policy_loss]
    return loss(model, config, split, part, device, kl_baseline)


def _sft(model: Any, config: OfflineConfig, split: Split, part: list[int], device: torch.device,
         kl_baseline: torch.Tensor | None) -> LossOutput:
    logprobs, mask = _completion_logprobs(model, config, split.examples, part, device)
    return sft_loss(logprobs, mask), {}


def _completion_logprobs(model: Any, config: OfflineConfig, examples: Examples, part: list[int],
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs of the completions of `part` under `model`, and their response mask."""
    batch = make_batch([examples.prompts[i] for i in part], [examples.completions[i] for i in part],
                       config.pad_token_id).to(device)
    logprobs, _ = response_logprobs(model, batch, temperature=1.0)
    return logprobs, batch.response_mask


def _rm(model: Any, config: OfflineConfig, split: Split, part: list[int], device: torch.device,
        kl_baseline: torch.Tensor | None) -> LossOutput:
    examples = split.examples
    prompts = [examples.prompts[i] for i in part]
    answers = [examples.completions[i] for i in part] + [examples.rejected[i] for i in part]
    rewards = sequence_rewards(model, prompts + prompts, answers, config.pad_token_id, device)
    return reward_model_loss(rewards[: len(part)], rewards[len(part):])


def _dpo(model: Any, config: OfflineConfig, split: Split, part: list[int], device: torch.device,
         kl_baseline: torch.Tensor | None) -> LossOutput:
    examples, reference = split.examples, split.reference
    prompts = [examples.prompts[i] for i in part]
    completions, rejected = [examples.completions[i] for i in part], [examples.rejected[i] for i in part]
    batch = make_batch(prompts + prompts, completions + rejected, config.pad_token_id).to(device)
    logprobs, _ = response_logprobs(model, batch, temperature=1.0)
    average = config.loss_type == "ipo"
    sequences = sequence_logprobs(logprobs, batch.response_mask, average)
    ref_chosen = reference_of(reference["chosen"], completions, part, average).to(device)
    ref_rejected = reference_of(reference["rejected"], rejected, part, average).to(device)
    loss, stats = dpo_loss(sequences[: len(part)], sequences[len(part):], ref_chosen, ref_rejected,
                           beta=config.beta, loss_type=config.loss_type, label_smoothing=config.label_smoothing)
    if config.sft_weight > 0:
        chosen_nll = sft_loss(logprobs[: len(part)], batch.response_mask[: len(part)])
        loss = loss + config.sft_weight * chosen_nll
        stats["chosen_nll"] = chosen_nll.detach()
    return loss, stats


def _kto(model: Any, config: OfflineConfig, split: Split, part: list[int], device: torch.device,
         kl_baseline: torch.Tensor | None) -> LossOutput:
    examples = split.examples
    policy = sequence_logprobs(*_completion_logprobs(model, config, examples, part, device))
    labels = torch.tensor([examples.labels[i] for i in part], device=device)
    return kto_loss(policy, split.reference["completion"][part].to(device), labels, kl_baseline, beta=config.beta,
                    desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)


OFFLINE_LOSSES = {"sft": _sft, "rm": _rm, "dpo": _dpo, "kto": _kto}  # by the descriptor's policy_loss


@torch.no_grad()
def kto_reference_point(engine: Any, config: OfflineConfig, split: Split, indices: list[int],
                        device: torch.device) -> torch.Tensor:
    """KTO's z0 over this step's whole batch (all ranks): the policy's log-ratio on mismatched completions."""
    examples = split.examples
    prompts = [examples.prompts[i] for i in indices]
    batch = make_batch(prompts, [examples.kl_completions[i] for i in indices], config.pad_token_id).to(device)
    logprobs, _ = response_logprobs(engine.forward_module, batch, temperature=1.0)
    ratio = sequence_logprobs(logprobs, batch.response_mask) - split.reference["kl"][indices].to(device)
    mean = torch.stack([ratio.sum(), torch.tensor(float(len(indices)), device=device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(mean)
    return kto_kl_baseline(mean[0:1] / mean[1], torch.zeros(1, device=device))


@torch.no_grad()
def evaluate(engine: Any, config: OfflineConfig, device: torch.device, rank: int, world: int) -> dict[str, float]:
    """The algorithm's loss and statistics on data.eval (`eval/...`): every rank scores an equal share (the
    remainder of an uneven split is left out, so every rank runs the same forward passes, as ZeRO-3 needs)."""
    split = config.evaluation
    share = len(split.examples) // world
    mine = list(range(rank * share, (rank + 1) * share))
    engine.model.eval()
    kl_baseline = kto_reference_point(engine, config, split, mine, device) if config.algorithm == "kto" else None
    micro = config.setup.micro_batch_size
    means = WeightedMeans()
    for start in range(0, len(mine), micro):
        part = mine[start : start + micro]
        loss, stats = algorithm_loss(engine.forward_module, config, split, part, device, kl_baseline)
        means.add({"loss": loss, **stats}, len(part))
    engine.model.train()
    return {f"eval/{key}": value for key, value in average_over_ranks(means.result(), world).items()}


def reference_of(sums: torch.Tensor, completions: list[list[int]], part: list[int], average: bool) -> torch.Tensor:
    """The precomputed reference log-probs of `part` (sums), or per-token means for IPO."""
    values = sums[part]
    return values / torch.tensor([max(1, len(c)) for c in completions], dtype=values.dtype) if average else values


def tokens_in(split: Split, indices: list[int]) -> int:
    """Tokens of the examples behind these batch indices: prompt and completion (and rejected, or KTO's KL
    completion, which are forwarded too)."""
    ex = split.examples
    extra = ex.rejected or ex.kl_completions
    return sum(len(ex.prompts[i]) * (2 if extra else 1) + len(ex.completions[i]) + (len(extra[i]) if extra else 0)
               for i in split.examples_of(indices))


def average_over_ranks(metrics: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return {k: float(v) / world for k, v in zip(keys, values)}


def restore(engine: Any, config: OfflineConfig) -> int:
    """Load the checkpoint the driver found (after a re-run or a worker failure), every rank its copy of the
    engine part, then the spec's learning rate; the checkpoint's step, else 0."""
    checkpoint = config.resume_from
    if checkpoint is None:
        return 0
    with tempfile.TemporaryDirectory(prefix="kuberlhf-checkpoint-") as scratch:
        fetch(config.checkpoints, f"{checkpoint.name}/engine", checkpoint.files_of("engine"), Path(scratch))
        engine.load(Path(scratch))
    engine.set_learning_rate(config.setup.learning_rate)
    return checkpoint.step


def save_checkpoint(engine: Any, config: OfflineConfig, step: int, rank: int, world: int,
                    stopped: str | None = None) -> None:
    """Every rank writes its part (DeepSpeed shards) into the job's storage from wherever it runs; once all
    have, rank 0 has the driver-side relay commit it (storage/checkpoints.py: manifest checked, state file
    last). Not Ray Train's checkpoints: its controller registers a reported checkpoint only at its next poll
    of the workers (every 2 s), so a worker killed in between lost it and the restarted run began from an
    older one."""
    import ray

    relay = config.checkpoints.relay
    if rank == 0:
        ray.get(relay.begin_checkpoint.remote(step))
    barrier(world)
    key = f"{checkpoint_name(step)}/engine"
    with tempfile.TemporaryDirectory(prefix="kuberlhf-checkpoint-") as scratch:
        engine.save(scratch)
        manifests = gather_objects(deliver(Path(scratch), config.checkpoints, key), world)
    if rank == 0:
        files = {f"engine/{name}": size for manifest in manifests for name, size in manifest.items()}
        state = {"algorithm": config.algorithm, "fingerprint": config.fingerprint}
        ray.get(relay.commit_checkpoint.remote(step, files, state, config.keep, stopped))
    barrier(world)  # no rank goes on (or stops) before the checkpoint is in place


class StopPoll:
    """Whether the driver got SIGTERM: rank 0 asks the driver's DriverFiles actor without waiting (the answer
    to the last question, if it has come), and every rank agrees on it at the same step."""

    def __init__(self, driver_files: Any, rank: int, world: int) -> None:
        self.driver_files, self.rank, self.world = driver_files, rank, world
        self.pending = driver_files.stop_requested.remote() if rank == 0 else None

    def requested(self) -> bool:
        import ray

        asked = 0.0
        if self.pending is not None and ray.wait([self.pending], timeout=0)[0]:
            asked = float(ray.get(self.pending))
            self.pending = self.driver_files.stop_requested.remote()
        flag = torch.tensor([asked])
        if self.world > 1:
            torch.distributed.all_reduce(flag)
        return bool(flag.item())


def gather_objects(value: Any, world: int) -> list[Any]:
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def save_final(engine: Any, model: torch.nn.Module, config: OfflineConfig, rank: int) -> None:
    """Every rank gathers (ZeRO-3); rank 0 writes `final/`, a Hugging Face model directory (or a LoRA adapter)."""
    from kuberlhf.models.loading import load_tokenizer
    from kuberlhf.models.lora import save_trained

    import ray

    weights = engine.full_state_dict()
    if rank == 0:
        with tempfile.TemporaryDirectory(prefix="kuberlhf-final-") as scratch:
            save_trained(model, weights, Path(scratch), config.merge_lora)
            load_tokenizer(config.model_path).save_pretrained(scratch)
            files = deliver(Path(scratch), config.outputs, FINAL)
        about = {"algorithm": config.algorithm, "step": config.total_steps}
        ray.get(config.outputs.relay.commit_final.remote(files, about))

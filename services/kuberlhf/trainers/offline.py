"""The driver of the offline stages (sft, rm, dpo, kto): tokenize the checked dataset, have the reference
model score it once (dpo, kto), then train on Ray Train (`TorchTrainer`, one worker per policy rank, DeepSpeed
ZeRO as the spec says); a worker that dies is replaced by a new run from the newest checkpoint. The
per-worker loop is `offline_loop.py`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch

from kuberlhf.data.examples import Examples, make_batch, tokenize_dataset
from kuberlhf.data.packing import pack_by_best_fit
from kuberlhf.errors import Interrupted, UserError
from kuberlhf.models.loading import load_tokenizer
from kuberlhf.preflight import OfflineInputs
from kuberlhf.spec import RLHFJob
from kuberlhf.telemetry.exporter import serve_job_metrics
from kuberlhf.storage.checkpoints import Checkpoint, begin_final
from kuberlhf.storage.transfer import start_on_this_node
from kuberlhf.telemetry.run_log import DriverFiles, closing_logs
from kuberlhf.telemetry.tracking import tracking_of
from kuberlhf.trainers.lifecycle import (RunStorage, StopRequest, find_resume, local_final, open_run_storage,
                                         run_with_restarts)
from kuberlhf.trainers.offline_loop import EVAL_FILE, OfflineConfig, Split, train_loop
from kuberlhf.engines.training import training_setup

REFERENCE_BATCH = 16  # sequences per reference forward pass


def train_offline(job: RLHFJob, inputs: OfflineInputs, note: Any, stop_request: StopRequest) -> dict[str, Any]:
    """Train one offline stage; returns where the final model and the metrics are."""
    import ray.train

    spec = job.spec
    tokenizer = load_tokenizer(inputs.policy_model)

    def tokenize(dataset: Any, field: str) -> Examples:
        examples = tokenize_dataset(dataset, tokenizer, spec.data.max_length, field)
        if spec.algorithm == "sft" and not spec.settings.completion_only:
            examples = whole_sequences(examples)
        if examples.truncated:
            note(f"{field}: {examples.truncated} completions were longer than spec.data.maxLength = "
                 f"{spec.data.max_length} tokens and were cut")
        for message in dataset.notes:
            note(message)
        return examples

    examples = tokenize(inputs.train, "spec.data.train")
    eval_examples = tokenize(inputs.eval, "spec.data.eval") if inputs.eval is not None else None
    if eval_examples is not None and len(eval_examples) < spec.resources.policy.workers:
        raise UserError(f"spec.data.eval: {len(eval_examples)} examples for {spec.resources.policy.workers} "
                        f"workers; each worker scores at least one")
    scored = [examples] + ([eval_examples] if eval_examples is not None else [])
    references = score_with_reference(job, inputs.reference_model, scored, tokenizer.pad_token_id) \
        if inputs.reference_model else [{} for _ in scored]
    train = Split(examples, references[0], packs=packs_of(examples, spec.data.max_length, note)
                  if spec.algorithm == "sft" and spec.settings.packing else None)
    evaluation = Split(eval_examples, references[1]) if eval_examples is not None else None
    config = offline_config(job, inputs, train, evaluation, tokenizer.pad_token_id)
    note(f"{spec.algorithm}: {len(examples)} examples, {config.steps_per_epoch} steps per epoch, "
         f"{config.total_steps} steps")
    config = dataclasses.replace(config, exporter=serve_job_metrics(job, config.total_steps, note))
    run = open_run_storage(job)
    begin_final(run.storage.outputs)  # an uncommitted final/ of a run that died while writing it
    config = dataclasses.replace(config, checkpoints=run.checkpoints, outputs=run.outputs,
                                 fingerprint=run.fingerprint,
                                 driver_files=start_on_this_node(DriverFiles, str(Path(job.output_dir).resolve())))
    stop_request.tell(lambda: config.driver_files.request_stop.remote())

    def attempt(resume_from: Checkpoint | None) -> None:  # a new Ray Train run from the newest complete checkpoint
        if resume_from is not None:
            note(f"resuming from {run.storage.checkpoints.storage.describe(resume_from.name)} "
                 f"(step {resume_from.step})")
        ray_train_run(job, dataclasses.replace(config, resume_from=resume_from)).fit()

    def stopped(err: BaseException) -> None:  # the workers checkpointed and stopped (or were stopped with the driver)
        if stop_request.requested:
            raise interrupted(run) from None

    with closing_logs(config.driver_files):  # the trackers' runs end with the stage, before the logs are copied
        _, restarts = run_with_restarts(job, attempt, (ray.train.TrainingFailedError,), "a Ray Train worker",
                                        config.total_steps, note, find_resume(job, config.total_steps, note),
                                        stopped)
    output = Path(job.output_dir)
    run.storage.copy_logs()
    evaluated = json.loads((output / EVAL_FILE).read_text()) if evaluation is not None else {}
    return {"final_model": local_final(run.storage), "metrics_file": str(output / "metrics.jsonl"),
            "eval": evaluated, "steps": config.total_steps, "restarts": restarts}


def interrupted(run: RunStorage) -> Interrupted:
    """The SIGTERM report: the newest checkpoint, from which running the job again continues."""
    newest = run.storage.checkpoints.newest()
    if newest is None:
        return Interrupted("SIGTERM: stopped before the first checkpoint; running the job again starts over")
    return Interrupted(f"SIGTERM: stopped after step {newest.step}; its checkpoint "
                       f"{run.storage.checkpoints.storage.describe(newest.name)} is saved, and running the job "
                       "again continues from it")


def ray_train_run(job: RLHFJob, config: OfflineConfig) -> Any:
    """The stage's Ray Train run: one worker per policy rank (Ray Train's run state under `checkpoint.dir`;
    the checkpoints are the job's own). Restarts are the driver's (`training.maxRestarts`), not Ray Train's:
    its own would retry a user error too."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from kuberlhf.engines.allocator import allocator_runtime_env

    role = job.spec.resources.policy
    return TorchTrainer(
        train_loop, train_loop_config={"config": config},
        scaling_config=ray.train.ScalingConfig(num_workers=role.workers, use_gpu=role.gpus > 0,
                                               resources_per_worker={"CPU": role.cpus, "GPU": role.gpus}),
        run_config=ray.train.RunConfig(
            name=job.metadata.name, storage_path=str(Path(job.checkpoint_dir).resolve()),
            failure_config=ray.train.FailureConfig(max_failures=0),
            worker_runtime_env=allocator_runtime_env(role.gpus),
        ),
    )


def offline_config(job: RLHFJob, inputs: OfflineInputs, train: Split, evaluation: Split | None,
                   pad_token_id: int) -> OfflineConfig:
    spec, t = job.spec, job.spec.training
    if train.size < t.batch_size:
        unit = "packed sequences" if train.packs is not None else "examples"
        raise UserError(f"spec.training.batchSize: {t.batch_size} {unit} per step but {spec.data.train} has "
                        f"only {train.size}")
    settings: dict[str, Any] = {}
    if spec.algorithm in ("dpo", "kto"):  # OfflineConfig's fields of the algorithm's settings block
        settings = spec.settings.model_dump()
    config = OfflineConfig(
        algorithm=spec.algorithm, model_path=inputs.policy_model,
        setup=training_setup(spec, t.learning_rate, "policy", total_steps=0), batch_size=t.batch_size,
        epochs=t.epochs, max_steps=t.steps if "steps" in t.model_fields_set else None, seed=t.seed,
        cpus=spec.resources.policy.cpus,
        checkpoint_every=spec.checkpoint.every_steps, checkpoints=None, outputs=None, fingerprint={},
        driver_files=None, keep=spec.checkpoint.keep, pad_token_id=pad_token_id, train=train,
        evaluation=evaluation, eval_every=t.eval_every_steps, lora=spec.policy.lora, merge_lora=spec.output.merge_lora,
        job_labels=dict(job.metadata.labels), max_non_finite_steps=t.max_non_finite_steps,
        tracking=tracking_of(job), **settings,
    )
    return dataclasses.replace(config, setup=dataclasses.replace(config.setup, total_steps=config.total_steps))


def packs_of(examples: Examples, max_length: int, note: Callable[[str], None]) -> list[list[int]]:
    """sft.packing: the examples of each packed sequence, and a note of how full they are."""
    lengths = [len(p) + len(c) for p, c in zip(examples.prompts, examples.completions)]
    packs = pack_by_best_fit(lengths, max_length)
    note(f"sft packing: {len(examples)} examples in {len(packs)} sequences of up to {max_length} tokens, "
         f"{sum(lengths) / (len(packs) * max_length):.0%} full")
    return packs


def whole_sequences(examples: Examples) -> Examples:
    """sft with completionOnly false: train on the prompt too (the first token stays as the context)."""
    prompts = [p[:1] for p in examples.prompts]
    completions = [p[1:] + c for p, c in zip(examples.prompts, examples.completions)]
    return Examples(prompts, completions, truncated=examples.truncated, where=examples.where)


def score_with_reference(job: RLHFJob, model: str, datasets: list[Examples], pad_token_id: int,
                         ) -> list[dict[str, torch.Tensor]]:
    """Sequence log-prob sums of every completion of each dataset under the frozen reference model, computed
    once by one reference actor: chosen and rejected answers (dpo), completions and mismatched completions (kto)."""
    import ray

    from kuberlhf.engines.allocator import allocator_options
    from kuberlhf.workers.reference import ReferenceWorker

    spec = job.spec
    role = spec.resources.reference
    actor = ray.remote(ReferenceWorker).options(
        name=f"{job.metadata.name}-reference-0", namespace="kuberlhf", num_cpus=role.cpus, num_gpus=role.gpus,
        **allocator_options(role.gpus),
    ).remote(model, cpus=role.cpus, seed=spec.training.seed, bf16=spec.training.bf16)
    try:
        return [_reference_sums(actor, examples, spec.algorithm, pad_token_id) for examples in datasets]
    finally:
        ray.kill(actor)


def _reference_sums(actor: Any, examples: Examples, algorithm: str, pad_token_id: int) -> dict[str, torch.Tensor]:
    import ray

    wanted = {"chosen": examples.completions, "rejected": examples.rejected} if algorithm == "dpo" else \
        {"completion": examples.completions, "kl": examples.kl_completions}
    sums = {}
    for name, completions in wanted.items():
        refs = []
        for start in range(0, len(examples), REFERENCE_BATCH):
            stop = min(start + REFERENCE_BATCH, len(examples))
            batch = make_batch(examples.prompts[start:stop], completions[start:stop], pad_token_id)
            refs.append(actor.compute_logprobs.remote(batch, 1.0))
        sums[name] = torch.cat([logprobs.sum(-1) for logprobs in ray.get(refs)])
    return sums

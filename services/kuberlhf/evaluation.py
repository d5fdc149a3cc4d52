"""`kuberlhf eval`: a model scored the way a run scores it at an evaluation. The job file supplies everything but
the model: the held-out prompts (`data.eval`), the reward (function, model or URL), the sampling settings, the
rollout engine and its placement, the seed. So the final model of a run, evaluated with the run's own job file,
gets the run's last `eval/reward_mean`, and any other model (the start model, another run's) is measured on the
same footing.

An evaluation starts only the roles that sample and score (rollout engines, the reward model when the job has
one): no policy, reference or critic is loaded.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kuberlhf.errors import UserError

if TYPE_CHECKING:
    from kuberlhf.data.batch import RolloutBatch
    from kuberlhf.preflight import ResolvedInputs
    from kuberlhf.spec import RLHFJob


@dataclass
class EvalResult:
    model: str
    data: str
    prompts: int
    samples: int
    reward_mean: float
    reward_std: float
    response_length_mean: float
    samples_file: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def evaluate_model(job: RLHFJob, model: str | None = None, data: str | None = None, output: str | None = None,
                   note: Callable[[str], None] = print) -> EvalResult:
    """Sample the held-out prompts with `model` (default: the job's committed final model) and score them with
    the job's reward; with `output`, every sample goes to that JSONL file (prompt, completion, reward, and what
    the reward function logged)."""
    import ray

    from kuberlhf.errors import user_error_in
    from kuberlhf.launcher import ray_session
    from kuberlhf.plan import compile_plan
    from kuberlhf.reward_functions import TrainerState
    from kuberlhf.trainers.heldout import heldout_rollout
    from kuberlhf.workers.launch import start_scoring_workers

    out_file = writable_output(output) if output else None
    job, inputs, data_source = eval_job(job, model, data, note)
    sampling, t = compile_plan(job.spec).sampling, job.spec.training
    with ray_session(job, dashboard=False) as where:
        note(f"evaluating {inputs.models['rollout']} on {data_source} ({len(inputs.eval)} prompts x "
             f"{sampling.samples_per_prompt} samples) on {where}")
        workers = start_scoring_workers(job, inputs)
        try:  # the state of a finished run, as its last evaluation sees it
            rollout, scores = heldout_rollout(workers, inputs.eval, sampling, t.seed, TrainerState(t.steps, t.steps))
        except ray.exceptions.RayError as err:  # a reward function's mistake is the user's, in one line
            raise user_error_in(err) or err from None
        finally:
            workers.shutdown()
    rewards = [float(score) for score in scores]
    if out_file is not None:
        write_samples(out_file, rollout, scores)
    lengths = rollout.response_lengths().tolist()
    return EvalResult(model=inputs.models["rollout"], data=data_source, prompts=len(inputs.eval),
                      samples=len(rewards), reward_mean=statistics.fmean(rewards),
                      reward_std=statistics.pstdev(rewards), response_length_mean=statistics.fmean(lengths),
                      samples_file=str(out_file) if out_file else None)


def eval_job(job: RLHFJob, model: str | None, data: str | None, note: Callable[[str], None]
             ) -> tuple[RLHFJob, ResolvedInputs, str]:
    """The job with `model` as its policy and `data` as its held-out prompts, checked as a run checks its inputs
    (models, data rows, prompt lengths, the reward); (job, what it resolved, where the prompts come from)."""
    from kuberlhf.jobfile import validate_job
    from kuberlhf.preflight import check_prompt_lengths, check_reward_inputs, resolve_model, resolve_rollout_engine
    from kuberlhf.data.prompts import load_prompts

    spec = job.spec
    if spec.stages is not None:
        raise UserError("kuberlhf eval: this is a chained job; pass --stage NAME (the online stage whose reward, "
                        "data and sampling to use)")
    if spec.is_offline:
        raise UserError(f"spec.algorithm: {spec.algorithm} trains without a reward, and kuberlhf eval scores with "
                        f"the job's reward; evaluate with a job file of an online algorithm (e.g. grpo) that names "
                        f"spec.reward and spec.data.eval")
    chosen = model or default_model(job, note)
    field = "--model" if model else "spec.policy.model"
    model_dir = resolve_model(chosen, field)
    source, split = (data, "train") if data else (spec.data.eval, spec.data.eval_split)
    if source is None:
        raise UserError("spec.data.eval: not set; pass --data FILE (prompts, with the columns the reward reads)")
    prompts = load_prompts(source, split, spec.data.subset, spec.data.columns, "--data" if data else "spec.data.eval")
    reward_model = check_reward_inputs(spec, list(prompts.columns))
    check_prompt_lengths(model_dir, [prompts], spec.data.max_prompt_tokens, spec.rollout.max_new_tokens)
    raw = job.model_dump(by_alias=True, exclude_unset=True)
    raw["spec"]["policy"]["model"] = model_dir
    models = {"rollout": model_dir, **({"reward": reward_model} if reward_model else {})}
    from kuberlhf.preflight import ResolvedInputs

    inputs = ResolvedInputs(models, prompts, prompts, resolve_rollout_engine(spec.rollout.engine))
    return validate_job(raw), inputs, str(source)


def default_model(job: RLHFJob, note: Callable[[str], None]) -> str:
    """The job's committed final model if it finished, else the model it starts from (a baseline)."""
    from kuberlhf.storage import job_storage
    from kuberlhf.storage.checkpoints import final_committed
    from kuberlhf.trainers.lifecycle import local_final

    storage = job_storage(job)
    if final_committed(storage.outputs):
        return local_final(storage)
    note(f"no final model in {storage.outputs.describe('final')} yet: evaluating spec.policy.model "
         f"{job.spec.policy.model} (the model the job starts from)")
    return job.spec.policy.model


def writable_output(output: str) -> Path:
    """`--output`, refused when it exists (nothing is overwritten) or its directory is missing."""
    path = Path(output)
    if path.exists():
        raise UserError(f"--output: {output} exists; choose another file (nothing was overwritten)")
    if not path.parent.is_dir():
        raise UserError(f"--output: directory {str(path.parent)!r} does not exist")
    return path


def write_samples(path: Path, rollout: RolloutBatch, scores: Any) -> None:
    """Every sample as a JSON line, written to a temporary sibling first so a crash leaves no half file."""
    from kuberlhf.telemetry.run_log import sample_records

    records = sample_records(0, rollout, scores, len(rollout))
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "step"}) + "\n" for r in records))
    partial.replace(path)


def print_result(result: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kuberlhf eval")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in (("model", result.model), ("data", result.data), ("prompts", result.prompts),
                       ("samples", result.samples), ("eval/reward_mean", f"{result.reward_mean:.4g}"),
                       ("reward std", f"{result.reward_std:.4g}"),
                       ("response_length/mean", f"{result.response_length_mean:.4g}"),
                       ("samples_file", result.samples_file or "-")):
        table.add_row(key, str(value))
    Console().print(table)

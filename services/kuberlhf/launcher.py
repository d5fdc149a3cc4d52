"""`kuberlhf run`: preflight, connect to Ray (the cluster at $RAY_ADDRESS or an embedded local one), start the
role workers, train, save, summarise. Everything the job needs is checked before the first actor starts.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from kuberlhf.telemetry.job_status import ENV as STATUS_ENV
from kuberlhf.errors import UserError, WorkersUnhealthy, user_error_in
from kuberlhf.capacity import check_capacity, models_by_role
from kuberlhf.preflight import ResolvedInputs, check_local_inputs, check_offline_inputs
from kuberlhf.quiet import quiet_libraries
from kuberlhf.ray_security import loopback_node, save_token, token_auth
from kuberlhf.telemetry.console import console, route_worker_output
from kuberlhf.spec import RLHFJob
from kuberlhf.storage import job_storage
from kuberlhf.storage.store import Storage
from kuberlhf.storage.checkpoints import Checkpoint, final_committed, set_aside
from kuberlhf.storage.lease import leased
from kuberlhf.trainers.lifecycle import StopRequest, find_resume, local_final, open_run_storage, run_with_restarts


def run_job(job: RLHFJob, dashboard: bool = True, resume: bool = True) -> dict[str, Any]:
    """Run a job (or each stage of a chained one) as the only writer of its outputs (storage/lease.py)."""
    quiet_libraries()
    job = anchor_local_dirs(job)
    storage = job_storage(job)
    roots = [storage.outputs] + ([storage.checkpoints.storage] if job.spec.checkpoint.dir else [])
    if storage.remote:  # the driver's own files (metrics.jsonl, run.log) are in output.dir
        roots.append(Storage(storage.local, "spec.output.dir"))
    with leased(roots):
        if job.spec.stages is not None:
            return run_stages(job, dashboard, resume)
        return run_single(job, dashboard, resume)


def anchor_local_dirs(job: RLHFJob) -> RLHFJob:
    """With `runtimeEnv.workingDir` Ray runs every worker in another directory: relative local `output.dir` and
    `checkpoint.dir` are made absolute here (from the driver's working directory), so each process writes where
    the driver reads."""
    spec = job.spec
    if not spec.runtime_env.working_dir:
        return job

    def anchored(section: Any) -> Any:
        path = section.dir
        return section if path is None or "://" in path else section.model_copy(update={"dir": os.path.abspath(path)})

    sections = {"output": anchored(spec.output), "checkpoint": anchored(spec.checkpoint)}
    return job.model_copy(update={"spec": spec.model_copy(update=sections)})


def run_single(job: RLHFJob, dashboard: bool, resume: bool) -> dict[str, Any]:
    if not resume:
        moved = set_aside(job_storage(job).checkpoints)
        if moved is not None:
            console().print(f"--no-resume: the checkpoints of the earlier run are now in {moved}")
    if job.spec.is_offline:
        return run_offline_job(job, dashboard)
    inputs = check_local_inputs(job)
    resume_from = find_resume(job, job.spec.training.steps, note)

    import ray

    from kuberlhf.telemetry.exporter import serve_job_metrics
    from kuberlhf.telemetry.run_log import StepDisplay
    from kuberlhf.trainers.online import train
    from kuberlhf.workers.launch import start_workers

    started = time.perf_counter()
    display = StepDisplay(job.spec.training.steps, first_step=0)
    with ray_session(job, dashboard) as where, StopRequest() as stop_request:
        display.note(f"RLHFJob {job.metadata.name}: {job.spec.algorithm} on {where}, "
                     f"rollouts by {inputs.rollout_engine}")
        check_fits(job, inputs)
        run = open_run_storage(job)
        exporter = serve_job_metrics(job, job.spec.training.steps, display.note)

        def attempt(resume_from: Checkpoint | None) -> dict[str, Any]:  # fresh workers, from the checkpoint
            workers = start_workers(job, inputs)
            try:
                return train(job, workers, inputs.train, inputs.eval, display, run, resume_from, exporter,
                             stop_request)
            except ray.exceptions.RayError as err:
                if isinstance(err, ray.exceptions.RayActorError):  # the worker died: restarted below
                    raise
                cause = user_error_in(err)
                if cause is not None:
                    raise cause from None
                raise
            finally:
                workers.shutdown()

        def describe(err: BaseException) -> str:
            return "a worker died" if isinstance(err, ray.exceptions.RayActorError) else "workers replaced"

        result, restarts = run_with_restarts(job, attempt, (ray.exceptions.RayActorError, WorkersUnhealthy),
                                             "a worker", job.spec.training.steps, display.note, resume_from,
                                             describe=describe)
    result["restarts"] = restarts
    return finish(job, result, time.perf_counter() - started, display.console)


def note(text: str) -> None:
    console().print(text, soft_wrap=True)


def check_fits(job: RLHFJob, inputs: Any) -> None:
    """The capacity preflight, once connected: CPUs and GPUs only on the embedded Ray (a cluster at
    $RAY_ADDRESS may autoscale), model states always."""
    check_capacity(job.spec, models_by_role(inputs), fixed_size=not os.environ.get("RAY_ADDRESS"),
                   rollout_engine=inputs.rollout_engine if isinstance(inputs, ResolvedInputs) else "hf")


def run_stages(job: RLHFJob, dashboard: bool, resume: bool = True) -> dict[str, Any]:
    """A chained job: its stages one after the other; a stage whose `final/` exists is done and skipped, so
    running the job again continues where it stopped."""
    from kuberlhf.stages import stage_jobs

    summaries = []
    for stage, stage_job in zip(job.spec.stages or [], stage_jobs(job)):
        stage_storage = job_storage(stage_job)
        if final_committed(stage_storage.outputs):
            final = local_final(stage_storage)
            console().print(f"stage {stage.name} ({stage.algorithm}): done earlier, {final}")
            summaries.append({"stage": stage.name, "algorithm": stage.algorithm, "status": "skipped",
                              "final_model": str(final)})
            continue
        console().print(f"stage {stage.name} ({stage.algorithm})")
        summaries.append({"stage": stage.name, **run_job(stage_job, dashboard, resume)})
    summary = {"job": job.metadata.name, "status": "succeeded", "stages": summaries,
               "final_model": summaries[-1]["final_model"]}
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    Path(job.output_dir, "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_offline_job(job: RLHFJob, dashboard: bool) -> dict[str, Any]:
    """sft, rm, dpo, kto: checked inputs, then Ray Train; a re-run resumes from the newest checkpoint."""
    from kuberlhf.trainers.offline import train_offline

    inputs = check_offline_inputs(job)
    outputs = job_storage(job).outputs
    if final_committed(outputs):
        raise UserError(f"{outputs.field}: {outputs.describe('final')} exists: this stage has finished; remove it "
                        f"or choose another {outputs.field} (nothing was overwritten)")
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    started, out = time.perf_counter(), console()
    with ray_session(job, dashboard) as where, StopRequest() as stop_request:
        out.print(f"RLHFJob {job.metadata.name}: {job.spec.algorithm} on {where}")
        check_fits(job, inputs)
        result = train_offline(job, inputs, lambda text: out.print(text, soft_wrap=True), stop_request)
    return finish(job, result, time.perf_counter() - started, out)


def finish(job: RLHFJob, result: dict[str, Any], wall_seconds: float, console: Any) -> dict[str, Any]:
    """Write `summary.json` next to the final model, plot `curves.png` beside it, and print the summary."""
    from kuberlhf.telemetry.run_log import print_summary

    summary = build_summary(job, result, wall_seconds)
    summary_file = Path(job.output_dir, "summary.json")
    summary_file.write_text(json.dumps(summary, indent=2))
    try:  # the curves are a convenience: a plot that fails never fails a finished run
        from kuberlhf.telemetry.report import plot_run, read_metrics

        title = f"{job.metadata.name} ({job.spec.algorithm})"
        plot = plot_run(read_metrics(result["metrics_file"]), Path(job.output_dir, "curves.png"), title)
        summary["plot"] = str(plot)
        summary_file.write_text(json.dumps(summary, indent=2))
    except Exception as err:
        console.print(f"warning: curves.png not written: {type(err).__name__}: {err}")
    print_summary(summary, console)
    return summary


@contextmanager
def ray_session(job: RLHFJob, dashboard: bool) -> Iterator[str]:
    """Connect to $RAY_ADDRESS if set, else start an embedded Ray with this machine's CPUs, on loopback with
    token auth (ray_security)."""
    import ray

    quiet_libraries()  # also names DeepSpeed's accelerator, which the workers inherit below
    env = {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p),
           "DS_ACCELERATOR": os.environ["DS_ACCELERATOR"]}
    if os.environ.get(STATUS_ENV):  # under the operator: the workers write progress to the RLHFJob too
        env[STATUS_ENV] = os.environ[STATUS_ENV]
    metadata = {"rlhfjob": job.metadata.name, "namespace": job.metadata.namespace or "", **job.metadata.labels}
    address = os.environ.get("RAY_ADDRESS")
    with ExitStack() as stack:
        if address:
            ray.init(address=address, runtime_env=job.spec.runtime_env.to_ray(env), namespace="kuberlhf",
                     job_config=ray.job_config.JobConfig(metadata=metadata), log_to_driver=True)
            where = f"Ray cluster {address}"
        else:
            token = stack.enter_context(token_auth())
            if token is None:
                console.print("warning: Ray token auth is off (RAY_AUTH_MODE=disabled): any local user can "
                              "attach to this run's Ray")
            with loopback_node():
                # "local": never attach to whatever cluster /tmp/ray/ray_current_cluster names (a stale one from
                # a killed `ray start` or test would otherwise be joined, and reject num_cpus)
                context = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=dashboard,
                                   dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                                   runtime_env=job.spec.runtime_env.to_ray(env), namespace="kuberlhf",
                                   job_config=ray.job_config.JobConfig(metadata=metadata), log_to_driver=True,
                                   configure_logging=False)
            where = "embedded local Ray on 127.0.0.1"
            if context.dashboard_url:
                where += f", dashboard http://{context.dashboard_url}"
                if token:
                    where += f" (sign in with the token in {save_token(token, context.address_info['session_dir'])})"
        stack.callback(ray.shutdown)
        route_worker_output()
        yield where


def build_summary(job: RLHFJob, result: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    from kuberlhf.telemetry.run_log import HEADLINE, OFFLINE_HEADLINE, read_records

    records = [record for _, record in read_records(Path(result["metrics_file"]))]

    headline = {}
    keys = OFFLINE_HEADLINE if job.spec.is_offline else HEADLINE
    if records:
        for key in keys:
            if key in records[-1]:
                headline[key] = (records[0].get(key, 0.0), records[-1][key])
    return {
        "job": job.metadata.name,
        "algorithm": job.spec.algorithm,
        "status": "succeeded",
        "steps": result.get("steps", job.spec.training.steps),
        "wall_seconds": round(wall_seconds, 1),
        "final_model": result["final_model"],
        "metrics_file": result["metrics_file"],
        "headline": headline,
        "eval": result["eval"],
        "restarts": result.get("restarts", 0),
    }

"""Chained jobs (`spec.stages`, e.g. sft -> rm -> ppo): every stage becomes a single-stage job of its own,
with the outputs of earlier stages wired into later ones.

Wiring, unless a stage sets the section itself: a stage trains the newest policy an earlier stage produced
(every algorithm but rm produces one; the reference defaults to that starting policy), an rm stage starts its
reward model from that policy too, and online stages score with the newest rm stage's model (which a ppo
critic then starts from). A stage inherits the job's sections, except those its algorithm does not use
(reward, rollout and critic for offline stages; the other algorithms' settings blocks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kuberlhf.algorithms.registry import SETTINGS_BLOCKS, algorithm
from kuberlhf.spec import RLHFJob, RLHFJobSpec
from kuberlhf.spec_errors import format_error
from kuberlhf.telemetry.job_status import STAGE_LABEL


def stage_documents(spec: RLHFJobSpec, output_dir: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, spec as YAML would hold it) of each stage, outputs under `output_dir/<stage name>/`."""
    assert spec.stages is not None
    job_sections = spec.model_dump(by_alias=True, exclude_unset=True, exclude={"stages", "algorithm"})
    policy = spec.policy.model
    reward_model: str | None = None
    documents = []
    for stage in spec.stages:
        raw = {key: value for key, value in job_sections.items() if _applies(key, stage.algorithm)}
        raw.update(stage.model_dump(by_alias=True, exclude_unset=True, exclude={"name"}))
        if stage.policy is None:
            raw["policy"] = {"model": policy}
        if algorithm(stage.algorithm).online and stage.reward is None and reward_model is not None:
            raw["reward"] = {"model": reward_model}
        raw["output"] = {**raw.get("output", {}), "dir": f"{output_dir}/{stage.name}"}
        if spec.output.uri:
            raw["output"]["uri"] = f"{spec.output.uri.rstrip('/')}/{stage.name}"
        if spec.checkpoint.dir:
            raw["checkpoint"] = {**raw.get("checkpoint", {}), "dir": f"{spec.checkpoint.dir}/{stage.name}"}
        final = f"{output_dir}/{stage.name}/final"
        if stage.algorithm == "rm":
            reward_model = final
        else:
            policy = final
        documents.append((stage.name, raw))
    return documents


def check_stages(spec: RLHFJobSpec) -> None:
    """Every stage of a chained job must be a valid job on its own; raises ValueError naming
    `stages.<i>.<field>`. Nothing to check for a single-stage job. Kept out of the spec model's validators so
    that the spec needs neither this module nor the error formatting (no import cycle)."""
    if spec.stages is None:
        return
    names = [stage.name for stage in spec.stages or []]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"stages: stage names must differ, {', '.join(duplicates)} repeats")
    for index, (_, raw) in enumerate(stage_documents(spec, "{output}")):
        try:
            RLHFJobSpec.model_validate(raw)
        except ValidationError as err:
            raise ValueError(f"stages.{index}.{format_error(err.errors()[0])}") from None


def stage_jobs(job: RLHFJob) -> list[RLHFJob]:
    """The stages of a chained job as runnable single-stage jobs (same metadata)."""
    output = str(Path(job.output_dir))
    metadata = job.metadata.model_dump(by_alias=True)
    return [RLHFJob.model_validate({"apiVersion": job.api_version, "kind": job.kind, "spec": raw,
                                    "metadata": {**metadata, "labels": {**metadata["labels"], STAGE_LABEL: name}}})
            for name, raw in stage_documents(job.spec, output)]


def _applies(section: str, name: str) -> bool:
    """Whether a job-level section carries over to a stage of this algorithm."""
    descriptor = algorithm(name)
    if section in SETTINGS_BLOCKS:
        return section == name
    if section in ("reward", "rollout"):
        return descriptor.online
    if section == "critic":
        return descriptor.critic
    return True  # output too: its dir and uri get the stage's name appended

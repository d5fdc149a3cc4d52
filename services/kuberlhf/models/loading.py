"""Load Hugging Face models and tokenizers for each role, with errors that name the role's spec field."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kuberlhf.errors import UserError


def load_tokenizer(path: str, padding_side: str = "left", field: str = "spec.policy.model") -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (EOS when the model has none) and the given padding side;
    `field` names where the path came from in an error."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{field}: cannot load a tokenizer from {path!r}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(path: str, field: str, dtype: torch.dtype = torch.float32,
                   quantization: object | None = None, device: torch.device | None = None) -> PreTrainedModel:
    """A causal LM for the policy, reference or rollout roles (`quantization`: a bitsandbytes config, QLoRA,
    quantized straight onto `device`)."""
    try:
        if quantization is not None:
            return AutoModelForCausalLM.from_pretrained(path, dtype=quantization.bnb_4bit_compute_dtype,
                                                        quantization_config=quantization,
                                                        device_map={"": device or torch.device("cpu")})
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise UserError(f"{field}: cannot load a causal language model from {path!r}: {err}") from None


def load_policy(path: str, lora: object | None, device: torch.device) -> PreTrainedModel:
    """The trained policy on its device: the full model, or with `lora` (the job's `policy.lora`) the base
    (4-bit for QLoRA) with LoRA adapters."""
    from kuberlhf.models.lora import add_lora, quantization_config

    quantization = quantization_config(lora, device)
    model = load_causal_lm(path, "spec.policy.model", quantization=quantization, device=device)
    if quantization is None:
        model = model.to(device)
    else:
        keep_4bit_weights_canonical(model)
    return add_lora(model, lora) if lora is not None else model


def keep_4bit_weights_canonical(model: torch.nn.Module) -> None:
    """bitsandbytes repacks a 4-bit layer's weight for its AVX512-bf16 CPU kernel at the first no-grad forward,
    and requantizes it back whenever the state dict is read: a log-prob pass and a weight sync every step
    would nudge the frozen base each time. Off: CPU QLoRA computes with the canonical weights throughout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_reward_model(path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A sequence-classification model with a single output (the reward)."""
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise UserError(f"spec.reward.model: cannot load a sequence-classification model from {path!r}: {err}") from None
    if model.config.num_labels != 1:
        raise UserError(
            f"spec.reward.model: {path!r} has {model.config.num_labels} labels; a reward model has exactly 1"
        )
    return model


def new_reward_model(path: str, pad_token_id: int | None) -> PreTrainedModel:
    """The model a reward-model stage trains: `path`'s transformer with a fresh single-output score head (or
    `path` itself when it already is a one-label sequence classifier). The pad token tells the model which
    position is the last real one."""
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise UserError(f"spec.policy.model: cannot build a reward model from {path!r}: {err}") from None
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def is_sequence_classifier(path: str) -> bool:
    """Whether a model directory holds a sequence-classification model (e.g. a trained reward model)."""
    architectures = AutoConfig.from_pretrained(path).architectures or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)

"""LoRA / QLoRA for the policy (peft): wrap the model, export merged weights for the rollout engines, and save
the final model merged or as an adapter.

Only the adapters train (the optimizer sees only parameters that require gradients); the frozen base is the
reference policy, so the reference role loads the base model as before. QLoRA quantizes the frozen base to
4 bits with bitsandbytes, which needs a CUDA GPU: elsewhere it is refused with the field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kuberlhf.errors import UserError


def add_lora(model: nn.Module, spec: Any) -> nn.Module:
    """`model` with LoRA adapters (`spec` is the job's `policy.lora`)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=spec.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module name the model does not have
        raise UserError(f"spec.policy.lora.targetModules: {err}") from None


def quantization_config(spec: Any) -> Any:
    """bitsandbytes 4-bit settings for QLoRA (`policy.lora.quantize: 4bit`), or None."""
    if spec is None or spec.quantize is None:
        return None
    if not torch.cuda.is_available():
        raise UserError("spec.policy.lora.quantize: 4-bit QLoRA needs a CUDA GPU (bitsandbytes); this worker has "
                        "none. Use LoRA without quantize here")
    try:
        import bitsandbytes  # noqa: F401  (only whether it is installed)
    except ImportError:
        raise UserError("spec.policy.lora.quantize: 4-bit QLoRA needs the bitsandbytes package") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def merged_state_dict(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's weights with the adapters folded in, under the base model's own names (what vLLM and
    HF load): W + (alpha / r) B A per adapted layer. `weights` is the LoRA model's state dict. QLoRA's 4-bit
    weights are dequantized first (the bf16 weights its forward pass computes with), their quantization
    state left out."""
    scaling = {name: layer.scaling["default"] for name, layer in model.named_modules() if _is_lora_layer(layer)}
    dense = dequantized_weights(model)
    merged = {}
    for name, tensor in weights.items():
        if ".lora_" in name or any(name.startswith(f"{weight}.") for weight in dense):
            continue
        tensor = dense.get(name, tensor)
        if name.endswith(".base_layer.weight"):
            layer = name.removesuffix(".base_layer.weight")
            a, b = weights[f"{layer}.lora_A.default.weight"], weights[f"{layer}.lora_B.default.weight"]
            tensor = tensor + (b.float() @ a.float()).to(tensor.dtype) * scaling[layer]
        merged[name.removeprefix("base_model.model.").replace(".base_layer.", ".")] = tensor
    return merged


def save_trained(model: nn.Module, weights: dict[str, torch.Tensor], path: Path, merge_lora: bool = True) -> None:
    """A trained model's final save (rank 0; `weights` gathered on every rank): a plain HF directory, or for
    a LoRA model the merged model (`merge_lora`) or the adapter alone (adapter_config.json + weights,
    loadable with peft on top of the base model)."""
    if not is_lora(model):
        model.save_pretrained(path, state_dict={k: v.cpu() for k, v in weights.items()}, safe_serialization=True)
    elif merge_lora:
        merged = {k: v.cpu() for k, v in merged_state_dict(model, weights).items()}
        base = model.get_base_model()
        if getattr(base, "is_loaded_in_4bit", False):
            base = dense_copy(base, merged)  # QLoRA: the merged model is a plain bf16 one
        base.save_pretrained(path, state_dict=merged, safe_serialization=True)
    else:  # peft keeps the adapter's entries of the full state dict
        model.save_pretrained(path, state_dict={k: v.cpu() for k, v in weights.items()}, safe_serialization=True)


def dense_copy(base: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (unquantized) CPU model of `base`'s architecture holding `weights`; its config has no
    quantization settings, so the directory it saves loads as an ordinary model."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(base.config)
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    dense.load_state_dict(weights)
    dense.generation_config = base.generation_config
    return dense


def dequantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The dense weight of every bitsandbytes 4-bit layer, by state-dict name (empty without QLoRA)."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return {}
    import bitsandbytes as bnb
    from peft.utils.integrations import dequantize_bnb_weight

    return {f"{name}.weight": dequantize_bnb_weight(module.weight, module.weight.quant_state)
            for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)

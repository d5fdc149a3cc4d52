"""LoRA / QLoRA for the policy (peft): wrap the model, export merged weights for the rollout engines, and save
the final model merged or as an adapter.

Only the adapters train (the optimizer sees only parameters that require gradients); the frozen base is the
reference policy, so the reference role loads the base model as before. QLoRA quantizes the frozen base to
4 bits with bitsandbytes (CUDA or CPU); the weights the rollout engines get, and the merged final model, are
the dequantized base plus the adapters, as a plain model.
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


def quantization_config(spec: Any, device: torch.device = torch.device("cpu")) -> Any:
    """bitsandbytes 4-bit settings for QLoRA (`policy.lora.quantize: 4bit`), or None: NF4 with double
    quantization (Dettmers et al. 2023), computing in bf16 on a GPU and in float32 on the CPU, where the rest
    of the job (and the rollout engines) compute in float32 too."""
    if spec is None or spec.quantize is None:
        return None
    try:
        import bitsandbytes  # noqa: F401  (only whether it is installed)
    except ImportError:
        raise UserError("spec.policy.lora.quantize: 4-bit QLoRA needs the bitsandbytes package "
                        "(pip install bitsandbytes)") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=qlora_dtype(device))


def qlora_dtype(device: torch.device) -> torch.dtype:
    """What a QLoRA model computes in, and the dtype of its unquantized parts."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def merged_state_dict(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's weights with the adapters folded in, under the base model's own names (what vLLM and
    HF load): W + (alpha / r) B A per adapted layer. `weights` is the LoRA model's state dict. QLoRA's 4-bit
    weights are dequantized first (the bf16 weights its forward pass computes with), their quantization
    state left out."""
    scaling = {name: layer.scaling["default"] for name, layer in model.named_modules() if _is_lora_layer(layer)}
    dense = dequantized_weights(model, weights)
    merged = {}
    for name, tensor in weights.items():
        if ".lora_" in name or any(name.startswith(f"{weight}.") for weight in dense):
            continue
        tensor = dense.get(name, tensor)
        if name.endswith(".base_layer.weight"):
            layer = name.removesuffix(".base_layer.weight")
            a, b = weights[f"{layer}.lora_A.default.weight"], weights[f"{layer}.lora_B.default.weight"]
            tensor = (tensor.float() + (b.float() @ a.float()) * scaling[layer]).to(tensor.dtype)
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
    dense = AutoModelForCausalLM.from_config(config, dtype=base.dtype)
    dense.load_state_dict(weights)
    dense.generation_config = base.generation_config
    return dense


def dequantized_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense weight of every bitsandbytes 4-bit layer, by state-dict name (empty without QLoRA), from the
    state dict's packed weight and quantization state: the serialized form, which bitsandbytes keeps exact even
    where it repacks a layer's live weight for its CPU kernels."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return {}
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState, dequantize_4bit

    dense = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            key = f"{name}.weight"
            state = {k[len(key) + 1:]: v for k, v in weights.items() if k.startswith(f"{key}.")}
            dense[key] = dequantize_4bit(weights[key], QuantState.from_dict(state, device=weights[key].device))
    return dense


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)

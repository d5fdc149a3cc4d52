"""LoRA: the merged weights the rollout engines and the final save get compute what the adapted model computes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from kuberlhf.errors import UserError
from kuberlhf.models.lora import add_lora, merged_state_dict, quantization_config, save_trained
from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama

LORA = SimpleNamespace(rank=4, alpha=8, dropout=0.0, target_modules="all-linear", quantize=None)


def adapted_model() -> torch.nn.Module:
    model = add_lora(build_tiny_llama(build_char_tokenizer("0123456789+="), max_position_embeddings=32), LORA)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero; give the adapters something to merge
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def test_only_the_adapters_train():
    trainable = [name for name, p in adapted_model().named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)


def test_merged_weights_reproduce_the_adapted_model_under_the_base_models_names():
    model = adapted_model()
    merged = merged_state_dict(model, model.state_dict())
    plain = build_tiny_llama(build_char_tokenizer("0123456789+="), max_position_embeddings=32).eval()
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged)
    ids = torch.tensor([[4, 5, 14, 6, 15]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_final_save_is_a_plain_model_when_merged_and_an_adapter_otherwise(tmp_path):
    model = adapted_model()
    save_trained(model, model.state_dict(), tmp_path / "merged", merge_lora=True)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    save_trained(model, model.state_dict(), tmp_path / "adapter", merge_lora=False)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4


def qlora_model(tmp_path) -> torch.nn.Module:
    """The tiny Llama saved, then loaded as the policy worker loads it with `quantize: 4bit` (on the CPU)."""
    from kuberlhf.models.loading import load_policy
    from kuberlhf.models.tiny import save_model_dir

    tokenizer = build_char_tokenizer("0123456789+=")
    save_model_dir(build_tiny_llama(tokenizer, max_position_embeddings=32), tokenizer, tmp_path / "base")
    model = load_policy(str(tmp_path / "base"), SimpleNamespace(**{**vars(LORA), "quantize": "4bit"}),
                        torch.device("cpu"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    return model.eval()


def test_qlora_hands_out_the_dequantized_base_plus_adapters_as_a_plain_model(tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    model = qlora_model(tmp_path)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # the base really is 4-bit
    merged = merged_state_dict(model, model.state_dict())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    assert set(merged) == set(plain.state_dict())  # no quantization state, base names
    plain.load_state_dict(merged)
    ids = torch.tensor([[4, 5, 14, 6, 15]])
    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
        synced = torch.log_softmax(plain(ids).logits.float(), -1)
    # the same weights (float32 on the CPU), summed once (merged) or per matmul (QLoRA's forward)
    torch.testing.assert_close(synced, expected, atol=1e-4, rtol=0)

    save_trained(model, model.state_dict(), tmp_path / "merged", merge_lora=True)
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert all(torch.equal(saved[name], tensor) for name, tensor in merged.items())


def test_qlora_without_bitsandbytes_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(UserError, match="spec.policy.lora.quantize: 4-bit QLoRA needs the bitsandbytes package"):
        quantization_config(SimpleNamespace(quantize="4bit"))

"""The capacity preflight: model-state bytes per worker by hand (ZeRO paper accounting), parameter counts from
a config alone, the cluster's capacity from `ray.nodes()`, CPUs and GPUs beyond a fixed-size cluster, and the
refusal of jobs that cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaConfig

from kuberlhf.errors import UserError
from kuberlhf.jobfile import load_job
from kuberlhf.capacity import (
    Capacity,
    cluster_capacity,
    frozen_model_memory,
    memory_shortfalls,
    parameter_count,
    trained_model_memory,
)
from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama, save_model_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PSI = 1_000_000_000


def test_model_states_of_a_trained_rank_follow_the_zero_accounting():
    # float32, no ZeRO: weights 4, gradients 4, Adam m and v 8 bytes per parameter
    assert trained_model_memory(PSI, 1, 0, False, False, False).device == 16 * PSI
    # bf16 ZeRO-2 on 4 ranks: W 2 + G 2/4 + O 12/4 = 5.5 bytes per parameter
    zero2 = trained_model_memory(PSI, 4, 2, True, False, False)
    assert (zero2.device, zero2.host) == (5.5 * PSI, 0)
    # bf16 ZeRO-3 on 8 ranks, both offloads: W 2/8 and O 12/8 in RAM, only G 2/8 on the GPU
    zero3 = trained_model_memory(PSI, 8, 3, True, True, True)
    assert (zero3.device, zero3.host) == (0.25 * PSI, 1.75 * PSI)
    assert frozen_model_memory(PSI, bf16=False).device == 4 * PSI
    assert frozen_model_memory(PSI, bf16=True, quantized=True).device == 0.5 * PSI


def test_parameters_are_counted_from_the_config_without_reading_weights(tmp_path):
    tokenizer = build_char_tokenizer("0123456789+= ")
    model = build_tiny_llama(tokenizer)
    save_model_dir(model, tokenizer, tmp_path / "tiny")
    assert parameter_count(str(tmp_path / "tiny")) == sum(p.numel() for p in model.parameters())
    # a 7B Llama's config alone (no weights on disk) counts its 6.7B parameters in a moment
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000).save_pretrained(tmp_path / "llama-7b")
    assert parameter_count(str(tmp_path / "llama-7b")) == 6_738_415_616
    assert parameter_count(str(tmp_path / "missing")) is None


def test_the_cluster_offers_its_smallest_known_gpu_and_all_its_ram():
    node = {"Alive": True, "Resources": {"CPU": 16, "GPU": 8, "accelerator_type:L4": 1, "memory": 100e9,
                                        "object_store_memory": 30e9}}
    dead = {**node, "Alive": False}
    assert cluster_capacity([node, node, dead]) == Capacity(24e9, 260e9)
    unknown = {"Alive": True, "Resources": {"GPU": 1, "accelerator_type:X9": 1, "memory": 1e9}}
    assert cluster_capacity([node, unknown]).gpu_memory is None  # a type we do not know: no GPU check


def ppo_job(*overrides: str):
    return load_job(EXAMPLES / "ppo-tiny.yaml", list(overrides)).spec


MODELS = {"policy": "m", "rollout": "m", "reward": "r", "reference": "m", "critic": "r"}


def test_a_7b_ppo_job_on_one_l4_per_role_is_refused_with_the_numbers():
    spec = ppo_job(*(f"spec.resources.{role}.gpus=1" for role in MODELS), "spec.resources.placement=separate",
                   "spec.training.bf16=true")
    problems = memory_shortfalls(spec, MODELS, Capacity(24e9, 1e12), count=lambda model: 7 * PSI)
    assert len(problems) == 2  # the policy's and the critic's bundles: 16 bytes x 7B = 112 GB each; the frozen
    # roles' 14 GB of bf16 weights fit
    assert "needs 112.0 GB for model states alone: policy 112.0 GB (full fine-tuning with Adam, ZeRO-0" in problems[0]
    # with LoRA the policy holds its 14 GB of frozen bf16 weights and fits; the critic still does not
    lora = ppo_job(*(f"spec.resources.{role}.gpus=1" for role in MODELS), "spec.resources.placement=separate",
                   "spec.training.bf16=true", "spec.policy.lora.rank=8")
    assert len(memory_shortfalls(lora, MODELS, Capacity(24e9, 1e12), count=lambda model: 7 * PSI)) == 1


def test_colocated_roles_add_up_on_their_shared_gpu():
    spec = ppo_job(*(f"spec.resources.{role}.gpus=1" for role in MODELS), "spec.training.bf16=true")
    problems = memory_shortfalls(spec, MODELS, Capacity(80e9, 1e12), count=lambda model: 2 * PSI)
    # one bundle of 1 GPU: policy 32 + rollout 4 + reward 4 + reference 4 + critic 32 = 76 GB <= 80 GB
    assert problems == []
    problems = memory_shortfalls(spec, MODELS, Capacity(80e9, 1e12), count=lambda model: 3 * PSI)
    assert len(problems) == 1 and "needs 114.0 GB" in problems[0]


def test_a_colocated_vllm_engine_counts_its_share_of_the_gpu():
    spec = ppo_job(*(f"spec.resources.{role}.gpus=1" for role in MODELS), "spec.training.bf16=true")
    # hf generation holds 4 GB of weights (76 GB in all, as above); vLLM takes 1/5 of 80 GB: 88 GB
    assert memory_shortfalls(spec, MODELS, Capacity(80e9, 1e12), count=lambda model: 2 * PSI) == []
    problems = memory_shortfalls(spec, MODELS, Capacity(80e9, 1e12), count=lambda model: 2 * PSI,
                                 rollout_engine="vllm")
    assert len(problems) == 1 and "needs 88.0 GB" in problems[0]
    assert "rollout 16.0 GB (vLLM weights and KV cache, 0.2 of each GPU (rollout.gpuMemoryUtilization))" in problems[0]
    smaller = ppo_job(*(f"spec.resources.{role}.gpus=1" for role in MODELS), "spec.training.bf16=true",
                      "spec.rollout.gpuMemoryUtilization=0.1")  # 8 GB: 80 GB in all
    assert memory_shortfalls(smaller, MODELS, Capacity(80e9, 1e12), count=lambda model: 2 * PSI,
                             rollout_engine="vllm") == []
    # a policy model the preflight cannot count (a hub id not cached here): the engine still takes its fifth
    # of the 40 GB GPU (8 GB, whatever its model), beside the reward model's 4 GB and the critic's 32 GB
    problems = memory_shortfalls(spec, MODELS, Capacity(40e9, 1e12), rollout_engine="vllm",
                                 count=lambda model: 2 * PSI if model == "r" else None)
    assert len(problems) == 1 and "needs 44.0 GB" in problems[0] and "rollout 8.0 GB" in problems[0]


def test_cpu_workers_are_checked_against_the_clusters_ram_and_unknown_models_are_skipped():
    spec = ppo_job()
    problems = memory_shortfalls(spec, MODELS, Capacity(None, 24e9), count=lambda model: PSI)
    assert len(problems) == 1 and "need 44.0 GB of RAM" in problems[0] and "24.0 GB" in problems[0]
    assert memory_shortfalls(spec, MODELS, Capacity(None, 24e9), count=lambda model: None) == []


def test_the_tiny_example_fits_and_an_oversized_job_is_a_user_error(monkeypatch):
    import kuberlhf.capacity as capacity

    monkeypatch.setattr("ray.nodes", lambda: [{"Alive": True, "Resources": {"memory": 8e9}}])
    monkeypatch.setattr("ray.cluster_resources", lambda: {"CPU": 2.0, "memory": 8e9})
    monkeypatch.setattr(capacity, "parameter_count", lambda model: 84_000)
    capacity.check_capacity(ppo_job(), MODELS, fixed_size=True)  # nothing raised
    with pytest.raises(UserError, match=r"^spec.resources: the job needs 1 CPUs and 1 GPUs in 1 bundles, but this "
                                        r"machine's Ray has 2 CPUs and 0 GPUs"):
        capacity.check_capacity(ppo_job("spec.resources.policy.gpus=1"), MODELS, fixed_size=True)
    capacity.check_capacity(ppo_job("spec.resources.policy.gpus=1"), MODELS, fixed_size=False)  # may autoscale
    monkeypatch.setattr(capacity, "parameter_count", lambda model: PSI)
    with pytest.raises(UserError, match=r"^spec.resources: the models do not fit: .*training.zeroStage"):
        capacity.check_capacity(ppo_job(), MODELS, fixed_size=False)


def test_cpus_and_gpus_beyond_the_cluster_are_named_with_the_numbers():
    from kuberlhf.capacity import resource_shortfall

    assert resource_shortfall([{"CPU": 1}, {"CPU": 1}], {"CPU": 2.0}) is None
    message = resource_shortfall([{"CPU": 4, "GPU": 1}] * 2, {"CPU": 16.0, "GPU": 1.0})
    assert "needs 8 CPUs and 2 GPUs in 2 bundles" in message and "has 16 CPUs and 1 GPUs" in message

"""Preflight: does the job fit the Ray cluster? Before any actor starts:

- CPUs and GPUs: on the embedded local Ray, whose size is fixed, a job asking for more than the machine has is
  refused at once (on a Ray cluster an autoscaler may still add nodes: there the placement group waits 60 s).
- Memory: the memory each worker needs for its model states is estimated from the model's parameter count
  and compared with the cluster: each GPU bundle with the GPU memory of its accelerator type (where Ray
  names a known one), and everything held in RAM with the nodes' memory. Model states are counted (weights,
  gradients, optimizer state), and a vLLM engine's fixed share of its GPU, but not activations, so this is a
  lower bound: a job it refuses would surely run out of memory, hours or minutes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kuberlhf.errors import UserError
from kuberlhf.preflight import OfflineInputs, ResolvedInputs
from kuberlhf.spec import RLHFJobSpec
from kuberlhf.plan import compile_plan
from kuberlhf.workers.placement import engine_memory_share, plan_placement

# Usable memory of the accelerator types Ray reports (resource `accelerator_type:<name>`), in bytes.
GPU_MEMORY = {"H100": 80e9, "H200": 141e9, "B200": 180e9, "A100-80G": 80e9, "A100-40G": 40e9, "L40S": 48e9,
              "L4": 24e9, "A10G": 24e9, "T4": 16e9}


@dataclass(frozen=True)
class WorkerMemory:
    """Bytes one worker needs: on its device (its GPU, or RAM for a CPU worker) and in host RAM (offloads)."""

    device: float
    host: float = 0.0
    what: str = ""  # how it was computed, for the error message


def trained_model_memory(params: int, workers: int, zero_stage: int, bf16: bool, offload_optimizer: bool,
                         offload_params: bool) -> WorkerMemory:
    """Model states of one rank training all `params` (psi) weights with Adam (ZeRO paper, Rajbhandari et
    al. 2020, section 3.1): weights W and gradients G take 2 psi bytes each in bf16 (4 psi in float32), Adam's
    state O 12 psi under bf16 (float32 master weights, m, v) or 8 psi in float32 (m, v): 16 psi in both cases.
    With N workers ZeRO-1 keeps O/N per rank, ZeRO-2 also G/N, ZeRO-3 also W/N. `offloadOptimizer` moves O
    to host RAM, `offloadParams` (ZeRO-3) moves W there too."""
    weights = grads = (2 if bf16 else 4) * params
    optimizer = (12 if bf16 else 8) * params
    if zero_stage >= 1:
        optimizer /= workers
    if zero_stage >= 2:
        grads /= workers
    if zero_stage >= 3:
        weights /= workers
    host = (optimizer if offload_optimizer else 0) + (weights if offload_params else 0)
    device = weights + grads + optimizer - host
    return WorkerMemory(device, host, f"full fine-tuning with Adam, ZeRO-{zero_stage} on {workers} worker(s)")


def frozen_model_memory(params: int, bf16: bool, quantized: bool = False, what: str = "frozen weights"
                        ) -> WorkerMemory:
    """Weights only: psi/2 bytes in 4-bit, 2 psi in bf16, 4 psi in float32 (LoRA adapters, under 1% of
    the weights, are not counted)."""
    return WorkerMemory(params * (0.5 if quantized else 2 if bf16 else 4), 0.0, what)


def worker_memory(spec: RLHFJobSpec, role: str, params: int, on_gpu: bool) -> WorkerMemory:
    """What one worker of `role` holds. Frozen roles load in bf16 on GPUs when training is in bf16."""
    t = spec.training
    lora = spec.policy.lora
    if role == "policy" and lora is not None:
        return frozen_model_memory(params, t.bf16, quantized=lora.quantize == "4bit",
                                   what="LoRA: the frozen base weights")
    if role in ("policy", "critic"):
        workers = getattr(spec.resources, role).workers
        return trained_model_memory(params, workers, t.zero_stage, t.bf16, t.offload_optimizer, t.offload_params)
    return frozen_model_memory(params, t.bf16 and on_gpu)


def parameter_count(model: str) -> int | None:
    """The model's parameters, from its config alone (built on the meta device: no weights read); None when
    the config cannot be read (a hub id not in the local cache: the preflight never downloads)."""
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model, local_files_only=True)  # never the network
        with torch.device("meta"):
            try:
                built = transformers.AutoModelForCausalLM.from_config(config)
            except ValueError:  # a reward model's config (sequence classification)
                built = transformers.AutoModel.from_config(config)
    except (OSError, ValueError, KeyError):
        return None
    return sum(p.numel() for p in built.parameters())


@dataclass(frozen=True)
class Capacity:
    """What the Ray cluster offers: memory per GPU (None: unknown type) and RAM over all nodes."""

    gpu_memory: float | None
    host_memory: float


def cluster_capacity(nodes: list[dict[str, Any]]) -> Capacity:
    """From `ray.nodes()`: the smallest known GPU type's memory, and Ray's memory plus object store per node."""
    alive = [n for n in nodes if n.get("Alive")]
    gpu_types = {key.split(":", 1)[1] for n in alive for key in n.get("Resources", {})
                 if key.startswith("accelerator_type:")}
    known = [GPU_MEMORY[t] for t in gpu_types if t in GPU_MEMORY]
    gpu_memory = min(known) if known and len(known) == len(gpu_types) else None
    host = sum(n["Resources"].get("memory", 0) + n["Resources"].get("object_store_memory", 0) for n in alive)
    return Capacity(gpu_memory, host)


def vllm_engine_memory(spec: RLHFJobSpec, num_gpus: float, gpu_memory: float) -> WorkerMemory:
    """A vLLM engine on GPUs takes its share of each (`rollout.gpuMemoryUtilization`) for weights and KV cache,
    whatever the model's size; while it samples, the colocated roles keep their model states beside it."""
    share = engine_memory_share(num_gpus, spec.rollout.gpu_memory_utilization)
    return WorkerMemory(share * gpu_memory * math.ceil(num_gpus), 0.0,
                        f"vLLM weights and KV cache, {share:g} of each GPU (rollout.gpuMemoryUtilization)")


def memory_shortfalls(spec: RLHFJobSpec, models: dict[str, str], capacity: Capacity,
                      count: Any = parameter_count, rollout_engine: str = "hf") -> list[str]:
    """One line per place the job's model states cannot fit; `models` maps each role the job starts to its
    model (roles whose parameters cannot be counted are left out). vLLM engines (`rollout_engine`) on GPUs of
    a known type count their share of the GPU, whatever their model."""
    counted = {model: count(model) for model in set(models.values())}  # roles often share a model
    params = {role: counted[model] for role, model in models.items() if counted[model] is not None}
    bundles, plan = plan_placement(spec.resources, list(models))  # every role: each takes its share of a bundle
    on_bundle: list[list[tuple[str, WorkerMemory]]] = [[] for _ in bundles]
    problems, host_needed, held_in_ram = [], 0.0, []
    for role, placements in plan.items():
        for placement in placements:
            if role == "rollout" and rollout_engine == "vllm" and placement.num_gpus and capacity.gpu_memory:
                need = vllm_engine_memory(spec, placement.num_gpus, capacity.gpu_memory)
            elif role in params:
                need = worker_memory(spec, role, params[role], placement.num_gpus > 0)
            else:
                continue
            on_bundle[placement.bundle_index].append((role, need))
            host_needed += need.host + (need.device if placement.num_gpus == 0 else 0)
        if role in params:
            held_in_ram.append(f"{role} {params[role] / 1e6:,.0f}M parameters ({need.what}): "
                               f"{gb(need.device + need.host)} per worker")
    if capacity.gpu_memory is not None:
        for index, bundle in enumerate(bundles):
            if not bundle.get("GPU"):
                continue
            on_gpu = sum(m.device for _, m in on_bundle[index])
            if on_gpu > bundle["GPU"] * capacity.gpu_memory:
                parts = ", ".join(f"{role} {gb(m.device)} ({m.what})" for role, m in on_bundle[index])
                problems.append(f"GPU bundle {index} ({bundle['GPU']:g} GPU of {gb(capacity.gpu_memory)}) needs "
                                f"{gb(on_gpu)} for model states alone: {parts}")
    if host_needed > capacity.host_memory:
        problems.append(f"the workers need {gb(host_needed)} of RAM for model states alone but the Ray cluster has "
                        f"{gb(capacity.host_memory)}: " + "; ".join(held_in_ram))
    return problems


def models_by_role(inputs: ResolvedInputs | OfflineInputs) -> dict[str, str]:
    """The model each role's workers load: every role the job starts (`spec.roles`, as the checked inputs hold
    them), except an offline stage's reference, which only scores the data before training and is gone by then."""
    if isinstance(inputs, OfflineInputs):
        return {"policy": inputs.policy_model}
    return dict(inputs.models)


def resource_shortfall(bundles: list[dict[str, float]], cluster: dict[str, float]) -> str | None:
    """What the bundles ask for beyond what the cluster has in all (CPUs, GPUs), or None."""
    wanted = {key: sum(b.get(key, 0) for b in bundles) for key in ("CPU", "GPU")}
    short = [key for key in ("CPU", "GPU") if wanted[key] > cluster.get(key, 0) + 1e-9]
    if not short:
        return None
    return (f"spec.resources: the job needs {wanted['CPU']:g} CPUs and {wanted['GPU']:g} GPUs in {len(bundles)} "
            f"bundles, but this machine's Ray has {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs; "
            f"lower resources.*.cpus/gpus/workers, or run on a Ray cluster (RAY_ADDRESS)")


def check_capacity(spec: RLHFJobSpec, models: dict[str, str], fixed_size: bool, rollout_engine: str = "hf"
                   ) -> None:
    """Refuse a job that cannot fit the Ray cluster it is connected to: CPUs and GPUs where the cluster's
    size is `fixed_size` (the embedded Ray), model states (and vLLM engines' shares of their GPUs) always."""
    import ray

    if fixed_size:
        if (problem := resource_shortfall(compile_plan(spec).bundles, ray.cluster_resources())) is not None:
            raise UserError(problem)
    problems = memory_shortfalls(spec, models, cluster_capacity(ray.nodes()), parameter_count, rollout_engine)
    if problems:
        raise UserError("spec.resources: the models do not fit: " + " | ".join(problems) + ". Spread the trained "
                        "roles over more workers with training.zeroStage 2 or 3, offload "
                        "(training.offloadOptimizer/offloadParams), train LoRA adapters (policy.lora), use "
                        "training.bf16, or choose a smaller model")


def gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"

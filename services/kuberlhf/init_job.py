"""`kuberlhf init`: look at the user's data (and reward, if any) and write a starter RLHFJob with the method that
fits, saying why and what the alternatives cost.

The rule: preference pairs -> dpo; single good/bad labels -> kto; demonstrations -> sft; prompts with a
checkable answer (a reward function) -> grpo; prompts with a reward model -> ppo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.algorithms.registry import ALGORITHMS
from kuberlhf.data.formats import FORMAT_NAMES, detect_dataset
from kuberlhf.data.reader import read_records
from kuberlhf.errors import UserError
from kuberlhf.jobfile import validate_job
from kuberlhf.spec import API_VERSION, KIND

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
GPU_ROLE_CPUS = 4  # per role on a GPU: tokenization, reward functions, vLLM's scheduler (pods have 8 per GPU)
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class Recommendation:
    algorithm: str
    reasons: list[str]  # why this method, and what the alternatives would cost
    job: dict[str, Any]  # the RLHFJob, as YAML would hold it


def recommend(data: str, reward: str | None = None, model: str = DEFAULT_MODEL, gpus: int = 0,
              name: str | None = None) -> Recommendation:
    dataset = detect_dataset(read_records(data, field="--data"))
    found = f"{data}: {len(dataset)} rows of {FORMAT_NAMES[dataset.format]} data" + \
        (" (conversations)" if dataset.conversational else "")
    if dataset.format == "preference":
        algorithm, reasons = "dpo", [
            found + ".",
            "DPO trains the policy on the pairs directly: one stage, no reward model, no sampling, so the least "
            "compute and the fewest moving parts.",
            "dpo.sftWeight adds an NLL term on the chosen answers, which keeps DPO from lowering their likelihood.",
            "Alternative: train a reward model on the pairs (algorithm rm), then PPO or GRPO with it: more compute "
            "and two stages, but the policy learns from its own samples and can go beyond the pairs.",
        ]
    elif dataset.format == "unpaired_preference":
        both = _prompts_with_both_labels(dataset.rows)
        algorithm, reasons = "kto", [
            found + ".",
            "KTO learns from single answers labelled good or bad: the cheapest preference data to collect, with "
            "no pairs needed.",
            "kto.desirableWeight / undesirableWeight rebalance the loss when one kind is much rarer.",
        ]
        if both:
            reasons.append(f"{both} prompts have both a good and a bad answer: paired up, they could train DPO, "
                           f"whose pairwise signal is finer-grained than single labels.")
    elif dataset.format in ("prompt_completion", "language_modeling", "conversation"):
        algorithm, reasons = "sft", [
            found + ".",
            "Demonstrations train with supervised fine-tuning: the model imitates the answers. It is usually the "
            "first stage; preference data (DPO, KTO) or a reward (PPO, GRPO) can refine it afterwards.",
        ]
    else:
        algorithm, reasons = _online(found, reward)
    job = _job(algorithm, data, reward, model, gpus, name or f"{algorithm}-{Path(data).stem}".lower())
    if gpus:
        reasons.append(placement_reason(job["spec"]["resources"], gpus))
    return Recommendation(algorithm, reasons, job)


def _online(found: str, reward: str | None) -> tuple[str, list[str]]:
    if reward is None:
        raise UserError(f"{found}: prompts alone need a reward to learn from; pass --reward package.module:function "
                        f"(a checkable answer) or --reward MODEL_DIR (a reward model)")
    if _FUNCTION.match(reward):
        return "grpo", [
            found + f", scored by the function {reward}.",
            "GRPO compares several samples of each prompt against each other: no critic model to train, which "
            "suits verifiable rewards (a right or wrong answer).",
            "Alternative: PPO with a critic gives per-token credit assignment, at the cost of a second trained model.",
        ]
    source = "the reward service" if _is_url(reward) else "the reward model"
    return "ppo", [
        found + f", scored by {source} {reward}.",
        "PPO with a critic (started from the reward model) is the full RLHF recipe for a learned reward: per-token "
        "advantages and a KL penalty that keeps the policy near the reference.",
        "Alternative: GRPO needs no critic (less memory), but a learned reward's noise is then the only baseline.",
    ]


def _job(algorithm: str, data: str, reward: str | None, model: str, gpus: int, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"algorithm": algorithm, "policy": {"model": model}, "data": {"train": data}}
    descriptor = ALGORITHMS[algorithm]
    if descriptor.online:
        key = "function" if _FUNCTION.match(reward or "") else "url" if _is_url(reward) else "model"
        spec["reward"] = {key: reward}
        spec["rollout"] = {"samplesPerPrompt": 8 if descriptor.groups else 4, "maxNewTokens": 256}
        spec["training"] = {"steps": 200, "promptsPerStep": 16, "learningRate": 1.0e-6}
    else:
        spec["training"] = {"epochs": 1, "batchSize": 32,
                            "learningRate": 2.0e-5 if algorithm == "sft" else 5.0e-7}
    job = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": _dns_label(name)}, "spec": spec}
    if gpus:
        spec["training"]["bf16"] = True
        if gpus > 1:
            spec["training"]["zeroStage"] = 2
        spec["resources"] = gpu_resources(validate_job(job).spec.roles, gpus, descriptor.online)
    spec["checkpoint"] = {"everySteps": 50}
    return job


def placement_reason(resources: dict[str, Any], gpus: int) -> str:
    """What `gpu_resources` did, in a sentence for the user."""
    roles = list(resources)
    shared = f"take turns on each GPU (each has 1/{len(roles)} of it to Ray)" if len(roles) > 1 else "use each GPU"
    text = f"Placement on {gpus} GPU(s): {', '.join(roles)} {shared}, in bf16"
    if gpus > 1:
        text += ", the policy sharded with ZeRO-2"
    if "rollout" in roles:
        text += (f"; each vLLM engine takes {1 / len(roles):.2f} of its GPU's memory and sleeps while the "
                 f"trainers run (rollout.gpuMemoryUtilization)")
    return text + "."


def gpu_resources(roles: tuple[str, ...], gpus: int, online: bool) -> dict[str, Any]:
    """Every role the job starts on the `gpus` GPUs, colocated (the default placement): bundle i is GPU i with
    rank i of each role, and the roles take turns on it within a step, as in verl's hybrid engine and
    OpenRLHF's `--colocate_all_models`: the policy trains on every GPU (ZeRO), a vLLM engine per GPU samples
    (asleep while the trainers run) and takes its share of the GPU's memory (`rollout.gpuMemoryUtilization`:
    1/number of roles), and the reference, reward and critic split each batch over the GPUs. An offline
    stage's reference scores the data on one GPU before training starts."""
    each = {"cpus": GPU_ROLE_CPUS, "gpus": 1}
    return {role: {"workers": gpus if online or role == "policy" else 1, **each} for role in roles}


def _prompts_with_both_labels(rows: list[dict[str, Any]]) -> int:
    labels: dict[str, set[bool]] = {}
    for row in rows:
        labels.setdefault(str(row["prompt"]), set()).add(bool(row["label"]))
    return sum(1 for seen in labels.values() if len(seen) == 2)


def _is_url(reward: str | None) -> bool:
    return bool(reward) and reward.startswith(("http://", "https://"))


def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:50].strip("-")
    return label or "rlhf-job"

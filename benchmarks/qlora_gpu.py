#!/usr/bin/env python
"""QLoRA against LoRA on one CUDA GPU: peak memory and update time of the policy worker, and whether the
weights it hands the rollout engines and saves are right.

Model: the Qwen2.5-0.5B-shaped Llama of `gpu_training.py` (494M parameters, random init). For LoRA (float32
base) and QLoRA (`policy.lora.quantize: 4bit`: NF4 base, bf16 compute), a fresh process runs the real
`PolicyWorker` (the lent machine has no Ray) with rank-16 adapters on every linear layer: PPO-clip updates on
a synthetic batch (`--batch` x (`--prompt-tokens` + `--response-tokens`), micro-batches of `--micro-batch`),
then checks:
  - the adapters moved and the loss stayed finite;
  - `state_dict()` (what the rollout engines load) is a dense model: a plain Llama loaded with it gives the
    trained model's log-probs (max difference reported; QLoRA's forward computes with the same dequantized
    bf16 weights plus the adapters);
  - `save_pretrained(merge_lora=True)` writes a directory that loads as an ordinary model with those log-probs.

Run (on a CUDA machine with bitsandbytes and peft; nothing is asserted, this is a benchmark):
    python benchmarks/qlora_gpu.py --out benchmarks/results/qlora_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_env import git_info, machine_info, write_results
from gpu_training import build_model, prepare_update, run_subprocess

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "services"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--response-tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5, help="timed updates (default 5, after 1 untimed)")
    parser.add_argument("--out", default="benchmarks/results/qlora_gpu.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration, JSON in
    return parser.parse_args(argv)


def logprobs_of(model: Any, experience: Any) -> Any:
    import torch

    from kuberlhf.models.forward import response_logprobs

    with torch.no_grad():
        batch = experience.rollout.select(list(range(4))).to(torch.device("cuda"))
        return response_logprobs(model, batch, temperature=1.0)[0].float().cpu()


def run_lora(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from kuberlhf.engines.training import TrainingSetup
    from kuberlhf.spec_offline import LoRASpec
    from kuberlhf.workers.policy import PolicyWorker

    lora = LoRASpec(rank=16, alpha=32, quantize=config["quantize"])
    worker = PolicyWorker(config["model"], cpus=8, seed=0, lora=lora)
    loaded_gib = torch.cuda.memory_allocated() / 2**30
    micro = config["micro_batch"]
    setup = TrainingSetup(learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0, micro_batch_size=micro,
                          accumulation_steps=config["batch"] // micro)
    experience, update = prepare_update(worker, setup, config)
    before = {n: p.detach().clone() for n, p in worker.model.named_parameters() if p.requires_grad}
    times, losses = [], []
    for step in range(1 + config["steps"]):
        torch.cuda.synchronize()
        started = time.perf_counter()
        metrics = worker.update(experience, update)
        torch.cuda.synchronize()
        losses.append(metrics["policy/loss"])
        if step:
            times.append(time.perf_counter() - started)
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in worker.model.named_parameters()
                if p.requires_grad)
    peak = torch.cuda.max_memory_allocated() / 2**30
    trained = logprobs_of(worker.model, experience)

    dense = AutoModelForCausalLM.from_pretrained(config["model"], dtype=trained_dtype(config)).cuda()
    dense.load_state_dict(worker.state_dict())  # strict: every weight present, none left quantized
    synced = logprobs_of(dense, experience)
    del dense
    with tempfile.TemporaryDirectory() as saved:
        worker.save_pretrained(saved, merge_lora=True)
        reloaded_config = json.loads(Path(saved, "config.json").read_text())
        reloaded = AutoModelForCausalLM.from_pretrained(saved).cuda()
        saved_logprobs = logprobs_of(reloaded, experience)
    return {"quantize": config["quantize"], "trainable_parameters": sum(p.numel() for p in before.values()),
            "memory_after_load_gib": loaded_gib, "peak_memory_gib": peak, "update_s": statistics.median(times),
            "update_times_s": times, "losses": losses, "adapters_moved_by": moved,
            "synced_vs_trained_max_logprob_diff": float((synced - trained).abs().max()),
            "saved_vs_trained_max_logprob_diff": float((saved_logprobs - trained).abs().max()),
            "saved_config_quantized": "quantization_config" in reloaded_config,
            "saved_dtype": str(next(reloaded.parameters()).dtype)}


def trained_dtype(config: dict[str, Any]) -> Any:
    import torch

    return torch.bfloat16 if config["quantize"] else torch.float32


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def summarize(results: dict[str, Any]) -> str:
    lines = ["# QLoRA vs LoRA on one GPU", "", f"Generated by `{results['command']}` at {results['date']} "
             f"(commit `{results['git']['commit']}`) on {results['gpu']}.",
             f"Model: 494M-parameter Qwen2.5-0.5B-shaped Llama; rank-16 adapters on every linear layer; "
             f"{results['batch']} x ({results['prompt_tokens']} + {results['response_tokens']}) tokens per "
             f"update, micro-batch {results['micro_batch']}.", "",
             "| base | memory after load (GiB) | peak (GiB) | update (s) | adapters moved | synced weights: "
             "max log-prob diff | saved model: max log-prob diff | saved as |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for run in results["runs"]:
        if "error" in run:
            lines.append(f"| {run.get('quantize') or 'fp32'} | error: {run['error'][-300:]!r} |||||||")
            continue
        saved_as = "4-bit (!)" if run["saved_config_quantized"] else run["saved_dtype"]
        lines.append(f"| {'NF4 (QLoRA)' if run['quantize'] else 'fp32 (LoRA)'} | {run['memory_after_load_gib']:.2f} | "
                     f"{run['peak_memory_gib']:.2f} | {run['update_s']:.3f} | {run['adapters_moved_by']:.1e} | "
                     f"{run['synced_vs_trained_max_logprob_diff']:.1e} | "
                     f"{run['saved_vs_trained_max_logprob_diff']:.1e} | {saved_as} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        config = json.loads(args.worker)
        print("RESULT " + json.dumps(run_lora(config)), flush=True)
        return
    with tempfile.TemporaryDirectory() as work:
        model = Path(work, "model")
        build_model(model)
        base = {"model": str(model), "batch": args.batch, "micro_batch": args.micro_batch,
                "prompt_tokens": args.prompt_tokens, "response_tokens": args.response_tokens, "steps": args.steps}
        runs = [run_subprocess({**base, "quantize": quantize}, __file__) for quantize in (None, "4bit")]
    results = {"command": "python benchmarks/qlora_gpu.py " + " ".join(argv or sys.argv[1:]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_info(), "machine": machine_info(),
               "gpu": gpu_name(),
               **{k: v for k, v in base.items() if k != "model"}, "runs": runs}
    write_results(args.out, results, summarize(results))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""KubeRLHF's GPU path on one CUDA GPU: policy-update throughput and MFU under DeepSpeed ZeRO 1/2/3 in
bfloat16, reference log-prob throughput, and HF-generate rollout throughput, for a 0.5B-class model.

It drives the real worker classes (`PolicyWorker`, `ReferenceWorker`, `RolloutWorker` with `rollout.engine: hf`)
the way their Ray actors run them, in plain processes: the lent GPU machine has no Ray. Each configuration runs
in a fresh subprocess (DeepSpeed joins one process group per process; NCCL, world size 1).

Model: a randomly initialised Llama with Qwen2.5-0.5B's dimensions (24 layers, hidden 896, 14 query / 2 KV
heads, MLP 4864, vocabulary 151,936, tied embeddings; Qwen2's QKV biases left out: 494M parameters), built
locally with a word-level tokenizer whose vocabulary fills the model's. (A `qwen2` config would make
`AutoTokenizer` rebuild that tokenizer as Qwen2's BPE, which encodes our words as nothing.) Batch: `--batch` sequences of `--prompt-tokens` + `--response-tokens` real
tokens (no padding), random ids; a policy update is one PPO-clip optimizer step over the batch in micro-batches
of `--micro-batch` (gradient accumulation), as `training.microBatchSize` makes it.

Model FLOPs per trained sequence (PaLM, appendix B, with the LM head only where it is needed):
6 (N - V d) T + 6 V d (R + 1) + 12 L d T^2, N the parameters, V d the tied embedding (a free lookup at the
input, the LM head's matrix at the output, which runs on the R + 1 positions that predict response tokens),
L layers, d hidden size, T = prompt + response tokens; a third of that for a forward pass. MFU = model FLOPs per second / peak; the peak is the H100 SXM's dense bf16 989 TFLOP/s, and the script
also measures the machine's own bf16 matmul rate (8192^3) and reports against that. Recomputed activations
(gradient checkpointing) are not counted as useful work, as usual for MFU.

Run (on a CUDA machine; nothing is asserted, this is a benchmark):
    python benchmarks/gpu_training.py --out benchmarks/results/gpu_training.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_env import git_info, machine_info, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "services"))  # the lent machine runs from the working tree, not an install

QWEN25_05B = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
              "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6}
H100_BF16_DENSE_TFLOPS = 989.4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], help="ZeRO stages (default 1 2 3)")
    parser.add_argument("--batch", type=int, default=32, help="sequences per policy update (default 32)")
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[8], help="micro-batch sizes (default 8)")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--response-tokens", type=int, default=768)
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both",
                        help="gradient checkpointing (default both)")
    parser.add_argument("--steps", type=int, default=6, help="timed updates per configuration (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first (default 2)")
    parser.add_argument("--gen-batch", type=int, default=64, help="prompts per generate call (default 64)")
    parser.add_argument("--gen-tokens", type=int, default=128, help="new tokens per sequence (default 128)")
    parser.add_argument("--profile-stage", type=int, help="also profile one update at this ZeRO stage (no "
                        "checkpointing): the top GPU kernels by time go into the results")
    parser.add_argument("--out", default="benchmarks/results/gpu_training.json")
    parser.add_argument("--work", help="directory for the model (default: a temporary one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration, JSON in
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- the model


def build_model(path: Path) -> int:
    """A random Qwen2.5-0.5B-shaped model and a tokenizer covering its vocabulary; returns the parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for i in range(len(vocab), QWEN25_05B["vocab_size"]):
        vocab[f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>", padding_side="left")
    config = LlamaConfig(**QWEN25_05B, pad_token_id=0, bos_token_id=1, eos_token_id=2, dtype="float32")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def matmul_tflops() -> float:
    """The machine's own bf16 ceiling: median rate of an 8192^3 product on random data."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times) / 1e12


# ---------------------------------------------------------------------------------------------- workers


def synthetic_experience(batch: int, prompt_tokens: int, response_tokens: int, vocab: int) -> Any:
    import torch

    from kuberlhf.data.batch import Experience, RolloutBatch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (batch, prompt_tokens + response_tokens), generator=generator)
    rollout = RolloutBatch(
        prompt_ids=ids[:, :prompt_tokens], prompt_mask=torch.ones(batch, prompt_tokens, dtype=torch.long),
        response_ids=ids[:, prompt_tokens:], response_mask=torch.ones(batch, response_tokens),
        rollout_logprobs=torch.full((batch, response_tokens), -12.0), prompts=[""] * batch,
        completions=[""] * batch,
    )
    return Experience(rollout=rollout, advantages=torch.randn(batch, response_tokens, generator=generator))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_update(worker: Any, setup: Any, config: dict[str, Any]) -> tuple[Any, Any]:
    """The worker's engine (one rank), a synthetic batch, and one PPO-clip epoch over it in micro-batches."""
    from kuberlhf.plan import PolicyUpdateConfig

    worker.setup_training(setup, 0, 1, "127.0.0.1", free_port())
    experience = synthetic_experience(config["batch"], config["prompt_tokens"], config["response_tokens"],
                                      QWEN25_05B["vocab_size"])
    update = PolicyUpdateConfig(epochs=1, mini_batch_size=None, clip_low=0.2, clip_high=0.2, dual_clip=None,
                                temperature=1.0, kl_loss_coef=0.0, kl_estimator="k3",
                                micro_batch_size=config["micro_batch"])
    return experience, update


def run_update(config: dict[str, Any]) -> dict[str, Any]:
    """Policy updates under DeepSpeed (one rank, NCCL), timed; plus the policy's no-grad log-prob pass."""
    import torch

    from kuberlhf.engines.training import TrainingSetup
    from kuberlhf.workers.policy import PolicyWorker

    worker = PolicyWorker(config["model"], cpus=8, seed=0)
    micro = config["micro_batch"]
    setup = TrainingSetup(learning_rate=1e-6, weight_decay=0.0, max_grad_norm=1.0, zero_stage=config["stage"],
                          bf16=True, gradient_checkpointing=config["checkpointing"], micro_batch_size=micro,
                          accumulation_steps=config["batch"] // micro)
    experience, update = prepare_update(worker, setup, config)
    times = []
    for step in range(config["warmup"] + config["steps"]):
        torch.cuda.synchronize()
        started = time.perf_counter()
        metrics = worker.update(experience, update)
        torch.cuda.synchronize()
        if step >= config["warmup"]:
            times.append(time.perf_counter() - started)
    profile = top_kernels(lambda: worker.update(experience, update)) if config.get("profile") else None
    logprob_seconds = time_logprobs(worker, experience, micro)
    return {"update_s": statistics.median(times), "update_times_s": times, "grad_norm": metrics["policy/grad_norm"],
            "loss_finite": bool(torch.isfinite(torch.tensor(metrics["policy/loss"]))),
            "policy_logprobs_s": logprob_seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "memory_report_mib": worker.memory_report(), "profile": profile}


def time_logprobs(worker: Any, experience: Any, micro: int, repeats: int = 3) -> float:
    """Median seconds of a no-grad log-prob pass over the batch, `micro` sequences at a time (first pass untimed)."""
    import torch

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(experience), micro):
            worker.compute_logprobs(experience.rollout.select(list(range(start, start + micro))), 1.0)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def top_kernels(step: Any, count: int = 15) -> list[dict[str, Any]]:
    """The GPU kernels that took the most time in one call of `step`, with their share of all GPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return [{"kernel": e.key[:120], "ms": e.self_device_time_total / 1e3, "share": e.self_device_time_total / total,
             "calls": e.count} for e in events[:count]]


def run_inference(config: dict[str, Any]) -> dict[str, Any]:
    """Reference log-probs (bf16, no grad) and HF-generate rollouts (bf16) on the GPU."""
    import torch

    from kuberlhf.engines.generation import SamplingParams
    from kuberlhf.workers.reference import ReferenceWorker
    from kuberlhf.workers.rollout import RolloutWorker

    reference = ReferenceWorker(config["model"], cpus=8, seed=0, bf16=True)
    experience = synthetic_experience(config["batch"], config["prompt_tokens"], config["response_tokens"],
                                      QWEN25_05B["vocab_size"])
    reference_seconds = time_logprobs(reference, experience, config["micro_batch"])
    del reference
    torch.cuda.empty_cache()

    rollout = RolloutWorker(config["model"], None, "hf", 4096, 1, False, cpus=8, seed=0, bf16=True)
    prompts = [" ".join(f"w{100 + (7 * i + j) % 5000}" for j in range(64)) for i in range(config["gen_batch"])]
    params = SamplingParams(samples_per_prompt=1, max_new_tokens=config["gen_tokens"], temperature=1.0, top_p=1.0)
    rollout.generate(prompts[:4], {}, SamplingParams(1, 8, 1.0, 1.0), seed=0)  # warm-up
    gen_times, generated = [], []
    for seed in range(3):
        torch.cuda.synchronize()
        started = time.perf_counter()
        batch = rollout.generate(prompts, {}, params, seed=seed + 1)
        torch.cuda.synchronize()
        gen_times.append(time.perf_counter() - started)
        generated.append(int(batch.response_mask.sum()))
    return {"reference_logprobs_s": reference_seconds, "generate_s": statistics.median(gen_times),
            "generated_tokens": statistics.median(generated), "device_of_batch": str(batch.response_ids.device)}


def worker_main(payload: str) -> None:
    config = json.loads(payload)
    result = run_update(config) if config["kind"] == "update" else run_inference(config)
    print("RESULT " + json.dumps(result), flush=True)


def run_subprocess(config: dict[str, Any], script: str = __file__) -> dict[str, Any]:
    """`script --worker CONFIG` in a fresh process; its RESULT line, or the error it ended with."""
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(config)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": (proc.stderr or proc.stdout)[-3000:], "returncode": proc.returncode}


# ---------------------------------------------------------------------------------------------- report


def flops_per_sequence(parameters: int, prompt: int, response: int, backward: bool) -> float:
    layers, hidden, vocab = QWEN25_05B["num_hidden_layers"], QWEN25_05B["hidden_size"], QWEN25_05B["vocab_size"]
    total = prompt + response
    forward = 2 * (parameters - vocab * hidden) * total + 2 * vocab * hidden * (response + 1) \
        + 4 * layers * hidden * total**2
    return 3 * forward if backward else forward


def summarize(results: dict[str, Any]) -> str:
    p = results["parameters"]
    tokens = p["batch"] * (p["prompt_tokens"] + p["response_tokens"])
    ceiling = results["matmul_tflops"]
    lines = [
        f"# KubeRLHF on one GPU ({results['gpu']})", "",
        f"Command: `{results['command']}` (commit {results['git']['commit']}, {results['timestamp']}).", "",
        f"Model: Llama with Qwen2.5-0.5B's dimensions, {results['model_parameters'] / 1e6:.0f}M parameters, random "
        f"init; bf16 under "
        f"DeepSpeed (float32 master weights). Update batch {p['batch']} x ({p['prompt_tokens']} + "
        f"{p['response_tokens']}) tokens = {tokens} tokens. Measured bf16 matmul ceiling: {ceiling:.0f} TFLOP/s.", "",
        "| ZeRO | micro-batch | grad. checkpointing | update (s) | tokens/s | MFU (989 peak) | MFU (measured "
        "ceiling) | peak GPU memory (GiB) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in results["updates"]:
        if "error" in run["result"]:
            lines.append(f"| {run['stage']} | {run['micro_batch']} | {run['checkpointing']} | failed | | | | |")
            continue
        seconds = run["result"]["update_s"]
        rate = p["batch"] * run["flops_per_sequence"] / seconds / 1e12
        lines.append(
            f"| {run['stage']} | {run['micro_batch']} | {'on' if run['checkpointing'] else 'off'} | {seconds:.3f} | "
            f"{tokens / seconds:,.0f} | {rate / H100_BF16_DENSE_TFLOPS:.1%} | {rate / ceiling:.1%} | "
            f"{run['result']['peak_memory_gib']:.1f} |")
    for run in results["updates"]:
        kernels = run["result"].get("profile")
        if kernels:
            lines += ["", f"Top GPU kernels of one update, ZeRO-{run['stage']}, micro-batch {run['micro_batch']}:", "",
                      "| kernel | ms | share of GPU time | calls |", "|---|---:|---:|---:|"]
            lines += [f"| `{k['kernel'][:90]}` | {k['ms']:.1f} | {k['share']:.1%} | {k['calls']} |" for k in kernels]
    inference = results["inference"]
    if "error" not in inference:
        fwd = flops_per_sequence(results["model_parameters"], p["prompt_tokens"], p["response_tokens"], False)
        ref_rate = tokens / inference["reference_logprobs_s"]
        lines += [
            "", f"Reference log-probs (bf16, no grad, micro-batch {p['micro_batch'][0]}): "
            f"{inference['reference_logprobs_s']:.3f} s per batch, {ref_rate:,.0f} tokens/s, "
            f"MFU {p['batch'] * fwd / inference['reference_logprobs_s'] / 1e12 / H100_BF16_DENSE_TFLOPS:.1%}.",
            f"HF-generate rollouts (bf16): {p['gen_batch']} prompts x {p['gen_tokens']} new tokens in "
            f"{inference['generate_s']:.2f} s = {inference['generated_tokens'] / inference['generate_s']:,.0f} "
            f"generated tokens/s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="kuberlhf-gpu-"))
    model = work / "qwen2-0.5b-shape"
    parameters = build_model(model)
    base = {"model": str(model), "batch": args.batch, "prompt_tokens": args.prompt_tokens,
            "response_tokens": args.response_tokens, "steps": args.steps, "warmup": args.warmup}
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    updates = []
    for stage in args.stages:
        for micro in args.micro_batch:
            for gc in checkpointing:
                config = {**base, "kind": "update", "stage": stage, "micro_batch": micro, "checkpointing": gc,
                          "profile": stage == args.profile_stage and not gc}
                result = run_subprocess(config)
                updates.append({"stage": stage, "micro_batch": micro, "checkpointing": gc, "result": result,
                                "flops_per_sequence": flops_per_sequence(parameters, args.prompt_tokens,
                                                                         args.response_tokens, True)})
                print(f"ZeRO-{stage} micro {micro} checkpointing {gc}: {json.dumps(result)[:300]}", flush=True)
    inference = run_subprocess({**base, "kind": "inference", "micro_batch": args.micro_batch[0],
                                "gen_batch": args.gen_batch, "gen_tokens": args.gen_tokens})
    results = {
        "command": " ".join(["python benchmarks/gpu_training.py", *sys.argv[1:]]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(), "machine": machine_info(deepspeed=("deepspeed",), transformers=("transformers",)),
        "gpu": torch.cuda.get_device_name(0), "matmul_tflops": matmul_tflops(), "model_parameters": parameters,
        "parameters": {"batch": args.batch, "micro_batch": args.micro_batch, "prompt_tokens": args.prompt_tokens,
                       "response_tokens": args.response_tokens, "steps": args.steps, "warmup": args.warmup,
                       "gen_batch": args.gen_batch, "gen_tokens": args.gen_tokens},
        "updates": updates, "inference": inference,
    }
    write_results(args.out, results, summarize(results))


if __name__ == "__main__":
    main()

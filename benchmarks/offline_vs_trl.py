#!/usr/bin/env python
"""DPO and KTO with KubeRLHF vs TRL's ``DPOTrainer`` / ``KTOTrainer``: step time and held-out accuracy, side by
side, from the same start.

Both train the SFT-warmed tiny Llama of ``kuberlhf.tasks.addition`` for one epoch, batch 32, one optimizer step
per batch, AdamW at a constant learning rate, reference log-probs computed once before training on both sides
(ours: a reference actor; TRL: ``precompute_ref_log_probs=True``):

* ``--algorithm dpo`` (default): the 4000 preference pairs of ``pairs.jsonl`` (the right sum chosen, a wrong
  one 1-9 away rejected), the sigmoid loss plus the NLL term on the chosen answers (ours: ``dpo.sftWeight``;
  TRL: ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, sftWeight]``, the same token mean), lr 1e-4.
* ``--algorithm rm``: 4000 pairs of a well-formed answer over the same answer with a stray '+' (written by this
  script: whether a sum is right is beyond this model's last-token head, so on ``pairs.jsonl`` both stay at
  chance), lr 1e-4, the Bradley-Terry loss; scored by held-out pair accuracy of the rewards.
* ``--algorithm kto``: the 4000 labelled completions of ``labels.jsonl``, desirable and undesirable weights 1,
  lr 3e-5. The KL reference point's mismatched completions differ: TRL pairs each example with a neighbour in a
  fixed sequential order, ours pairs example i with example i+1 of the file and shuffles the batches.
 Completions end with EOS on both sides; one torch thread each (ours: one
Ray Train worker with ``cpus: 1``; TRL: a fresh subprocess with ``torch.set_num_threads(1)``).

Scored afterwards by this script, with the same functions for both final models and the start model:
held-out sampled accuracy (``eval.jsonl``, temperature 1, 4 samples per prompt) and held-out pair accuracy
(share of 256 held-out pairs whose implicit reward beta * (log pi - log pi_ref) ranks the right sum first).
Step time: ours from ``metrics.jsonl`` (``time/step``: forward, backward and optimizer step inside the worker),
TRL from ``on_step_begin`` -> ``on_step_end``; medians after the first 2 steps. Ratios < 1: ours is faster.

Run: ``.venv/bin/python benchmarks/offline_vs_trl.py [--algorithm kto]`` (about a minute on 2 CPU cores; keep
the machine idle).
"""

from __future__ import annotations

import argparse
import json
import os
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
DATA = {"dpo": "pairs", "kto": "labels", "rm": "format_pairs"}  # the data file of each algorithm
TRAINERS = {"dpo": "DPOTrainer", "kto": "KTOTrainer", "rm": "RewardTrainer"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", choices=("dpo", "kto", "rm"), default="dpo")
    parser.add_argument("--batch", type=int, default=32, help="examples per optimizer step (default 32)")
    parser.add_argument("--learning-rate", type=float, help="default 1e-4 (dpo, rm), 3e-5 (kto)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--sft-weight", type=float, default=1.0, help="dpo: NLL term on chosen answers (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--assets", default=".cache/bench-assets")
    parser.add_argument("--out", help="default benchmarks/results/<algorithm>_vs_trl.json")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)  # internal: run TRL in this process
    args = parser.parse_args(argv)
    if args.learning_rate is None:
        args.learning_rate = 3e-5 if args.algorithm == "kto" else 1e-4
    args.out = args.out or f"benchmarks/results/{args.algorithm}_vs_trl.json"
    return args


def median_after_warmup(seconds: list[float]) -> float:
    return statistics.median(seconds[WARMUP_STEPS:] if len(seconds) > WARMUP_STEPS else seconds)


def run_ours(args: argparse.Namespace, assets: dict[str, str], out: Path) -> dict[str, Any]:
    from kuberlhf.jobfile import validate_job
    from kuberlhf.launcher import run_job

    settings = {"dpo": {"dpo": {"beta": args.beta, "sftWeight": args.sft_weight}}, "kto": {"kto": {"beta": args.beta}},
                "rm": {}}[args.algorithm]
    job = validate_job({
        "apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": f"bench-{args.algorithm}"},
        "spec": {"algorithm": args.algorithm, "policy": {"model": assets["model"]},
                 "data": {"train": assets[DATA[args.algorithm]], "maxLength": 16}, **settings,
                 "training": {"epochs": 1, "batchSize": args.batch, "learningRate": args.learning_rate,
                              "seed": args.seed},
                 "resources": {"policy": {"cpus": 1}}, "output": {"dir": str(out)}},
    })
    started = time.perf_counter()
    summary = run_job(job, dashboard=False)
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    steps = [r["time/step"] for r in records]
    return {"name": "kuberlhf", "steps": len(steps), "median_step_s": median_after_warmup(steps),
            "total_wall_s": round(time.perf_counter() - started, 1), "final_model": summary["final_model"]}


def run_trl(args: argparse.Namespace, assets: dict[str, str], out: Path) -> dict[str, Any]:
    config = out / "worker.json"
    out.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({**vars(args), "assets": assets, "run_dir": str(out)}))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--trl-worker", str(config)], cwd=REPO, env=env, check=True)
    result = json.loads((out / "result.json").read_text())
    return {**result, "total_wall_s": round(time.perf_counter() - started, 1)}


def trl_worker(config_path: str) -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import AutoModelForSequenceClassification
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer

    torch.set_num_threads(1)
    cfg = json.loads(Path(config_path).read_text())
    run_dir = Path(cfg["run_dir"])
    rows = [json.loads(line) for line in Path(cfg["assets"][DATA[cfg["algorithm"]]]).read_text().splitlines()]

    timer = trl_step_timer()
    common = dict(
        output_dir=str(run_dir / "trainer"), per_device_train_batch_size=cfg["batch"], num_train_epochs=1,
        learning_rate=cfg["learning_rate"], max_length=16, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=cfg["seed"], logging_steps=1, report_to="none", save_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True,
    )
    preference = dict(beta=cfg["beta"], precompute_ref_log_probs=True)
    model = AutoModelForCausalLM.from_pretrained(cfg["assets"]["model"], dtype=torch.float32)
    if cfg["algorithm"] == "dpo":
        trainer_class, config = DPOTrainer, DPOConfig(**common, **preference, loss_type=["sigmoid", "sft"],
                                                      loss_weights=[1.0, cfg["sft_weight"]])
    elif cfg["algorithm"] == "kto":
        trainer_class, config = KTOTrainer, KTOConfig(**common, **preference, desirable_weight=1.0,
                                                      undesirable_weight=1.0)
    else:
        trainer_class, config = RewardTrainer, RewardConfig(**common)
        model = AutoModelForSequenceClassification.from_pretrained(cfg["assets"]["model"], num_labels=1,
                                                                   dtype=torch.float32)
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(cfg["assets"]["model"]),
        callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(str(run_dir / "final"))
    trainer.processing_class.save_pretrained(str(run_dir / "final"))
    (run_dir / "result.json").write_text(json.dumps({
        "name": "trl", "steps": len(timer.seconds), "median_step_s": median_after_warmup(timer.seconds),
        "torch_threads": torch.get_num_threads(), "final_model": str(run_dir / "final")}))


def sequence_logprobs_of(model_dir: str, pairs: list[dict]) -> tuple[Any, Any]:
    """Summed log-probs of each pair's chosen and rejected answer (+ EOS) under a model."""
    import torch
    from transformers import AutoModelForCausalLM

    from kuberlhf.algorithms.preference import sequence_logprobs
    from kuberlhf.data.examples import make_batch
    from kuberlhf.models.forward import response_logprobs
    from kuberlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = tokenizer([p["prompt"] for p in pairs]).input_ids
    scores = []
    for key in ("chosen", "rejected"):
        answers = [ids + [tokenizer.eos_token_id] for ids in
                   tokenizer([p[key] for p in pairs], add_special_tokens=False).input_ids]
        batch = make_batch(prompts, answers, tokenizer.pad_token_id)
        with torch.no_grad():
            logprobs, _ = response_logprobs(model, batch, 1.0)
        scores.append(sequence_logprobs(logprobs, batch.response_mask))
    return scores[0], scores[1]


def format_pairs(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": r["answer"] + "+"} for r in rows]


def evaluate_reward_models(models: dict[str, str], assets: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Held-out pair accuracy of each reward model, scored the way KubeRLHF's reward role scores."""
    import torch

    from kuberlhf.models.loading import load_reward_model, load_tokenizer
    from kuberlhf.models.reward import score_texts
    from kuberlhf.tasks.addition import read_jsonl

    pairs = format_pairs(read_jsonl(assets["eval"]))
    scores: dict[str, dict[str, Any]] = {"start": {"sampled_accuracy": None, "pair_accuracy": None}}
    for name, path in models.items():
        if name == "start":
            continue
        model, tokenizer = load_reward_model(path).eval(), load_tokenizer(path, padding_side="right")
        rewards = {key: score_texts(model, tokenizer, [p["prompt"] for p in pairs], [p[key] for p in pairs], 64,
                                    torch.device("cpu")) for key in ("chosen", "rejected")}
        scores[name] = {"sampled_accuracy": None,
                        "pair_accuracy": float((rewards["chosen"] > rewards["rejected"]).float().mean())}
    return scores


def evaluate(models: dict[str, str], assets: dict[str, str], seed: int) -> dict[str, dict[str, float]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kuberlhf.tasks.addition import make_offline_rows, read_jsonl, sampled_accuracy

    eval_rows = read_jsonl(assets["eval"])
    pairs = make_offline_rows(eval_rows, seed=1)["pairs"]
    ref_chosen, ref_rejected = sequence_logprobs_of(models["start"], pairs)
    scores = {}
    for name, path in models.items():
        chosen, rejected = sequence_logprobs_of(path, pairs)
        pair_accuracy = float(((chosen - ref_chosen) > (rejected - ref_rejected)).float().mean())
        model = AutoModelForCausalLM.from_pretrained(path)
        sampled = sampled_accuracy(model, AutoTokenizer.from_pretrained(path), eval_rows, seed=seed)
        scores[name] = {"sampled_accuracy": sampled, "pair_accuracy": pair_accuracy if name != "start" else None}
    return scores


def weight_difference(first: str, second: str, start: str) -> dict[str, float]:
    """Largest element-wise difference between two final models, and how far training moved the first."""
    from safetensors.torch import load_file

    a, b, s = (load_file(str(Path(path) / "model.safetensors")) for path in (first, second, start))
    return {"max_abs_difference": max(float((a[k] - b[k]).abs().max()) for k in a),
            "max_abs_change_from_start": max(float((a[k] - s[k]).abs().max()) for k in a)}


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(results: dict[str, Any]) -> str:
    runs, scores = results["runs"], results["scores"]
    lines = [
        f"# {results['config']['algorithm'].upper()}: KubeRLHF vs TRL {TRAINERS[results['config']['algorithm']]}", "",
        f"Generated by `{results['command']}` at {results['timestamp']} (commit "
        f"`{(results['git']['commit'] or 'unknown')[:12]}`). Machine: {results['machine']['nproc']} CPU cores, "
        f"torch {results['machine']['torch']}, TRL {results['machine']['trl']}; load average before/after "
        f"{results['load_average']['before']} / {results['load_average']['after']}.",
        f"1 epoch of the 4000 rows of {DATA[results['config']['algorithm']]}.jsonl, batch {results['config']['batch']}, "
        f"lr {results['config']['learning_rate']:g}, beta {results['config']['beta']:g}"
        + (f", NLL weight {results['config']['sft_weight']:g}" if results['config']['algorithm'] == "dpo" else "")
        + ", one thread each.", "",
        "| run | steps | median step (ms) | wall (s) | held-out sampled accuracy | held-out pair accuracy |",
        "|---|---:|---:|---:|---:|---:|",
        f"| start | | | | {fmt(scores['start']['sampled_accuracy'])} | |",
    ]
    for name, run in runs.items():
        lines.append(f"| {name} | {run['steps']} | {run['median_step_s'] * 1e3:.1f} | {run['total_wall_s']} | "
                     f"{fmt(scores[name]['sampled_accuracy'])} | {fmt(scores[name]['pair_accuracy'])} |")
    lines += ["", f"Median step time, KubeRLHF / TRL: **{results['step_ratio']:.2f}** (wall time includes start-up: "
              "Ray and Ray Train for ours, model and dataset preparation for TRL)."]
    weights = results["weights"]  # None for rm: each side draws its own random score head
    if weights is not None:
        lines.append(f"Final weights: the two models differ by at most {weights['max_abs_difference']:.1e} per "
                     f"element, while training moved them by up to {weights['max_abs_change_from_start']:.1e}.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return
    os.chdir(REPO)
    from kuberlhf.tasks.addition import build_demo_assets

    before = load_average()
    assets = build_demo_assets(args.assets, seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix=f"{args.algorithm}_vs_trl-"))
    if args.algorithm == "rm":
        from kuberlhf.tasks.addition import read_jsonl, write_jsonl

        assets = {**assets, "format_pairs": str(write_jsonl(format_pairs(read_jsonl(assets["train"])),
                                                            work / "format_pairs.jsonl"))}
    runs = {"kuberlhf": run_ours(args, assets, work / "ours"), "trl": run_trl(args, assets, work / "trl")}
    finals = {name: run.pop("final_model") for name, run in runs.items()}
    if args.algorithm == "rm":
        scores, weights = evaluate_reward_models({"start": assets["model"], **finals}, assets), None
    else:
        scores = evaluate({"start": assets["model"], **finals}, assets, args.seed)
        weights = weight_difference(finals["kuberlhf"], finals["trl"], assets["model"])
    results = {
        "benchmark": f"{args.algorithm}_vs_trl", "command": " ".join(["benchmarks/offline_vs_trl.py", *sys.argv[1:]]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_info(),
        "machine": machine_info(transformers=("transformers",), trl=("trl",), ray=("ray",)),
        "load_average": {"before": before, "after": load_average()},
        "config": {k: v for k, v in vars(args).items() if k != "trl_worker"},
        "runs": runs, "scores": scores, "weights": weights,
        "step_ratio": runs["kuberlhf"]["median_step_s"] / runs["trl"]["median_step_s"],
    }
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    main()

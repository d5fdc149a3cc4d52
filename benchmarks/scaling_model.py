#!/usr/bin/env python
"""A model of one online RL step at scale: predicted tokens/s per GPU for 7B and 70B policies on N GPUs, for each
weight-sync transport, on-policy and one step off policy. Prints a Markdown table and writes it (with every
constant and its source) to ``--out``. A model, not a measurement: docs/scaling.md says how far to trust it.

One step of a fixed global batch (``--prompts`` x ``--samples`` sequences of ``--prompt-tokens`` +
``--response-tokens``):

    on-policy:      T = T_compute_on  + T_sync
    one step off:   T = T_compute_off + T_sync            (generation overlaps training; the sync does not)
    T_compute_mode  = tokens / (N x R_mode(P))            R_mode(P) = R_mode(8B) x (8B / P) x tp_efficiency(P)

R(8B) is calibrated on NeMo-RL's published GRPO Llama-3.1-8B runs on 16 H100s, which include their own sync
(an NCCL/IPC refit): 1,581 tokens/s/GPU on-policy and 2,478 one step off. So the sync term here is each
transport's sync time *minus* that of an NCCL broadcast, added to the calibrated compute (swapping the transport
adds the difference). Compute per token grows linearly with the parameter count (forward, backward and decode
are all ~2-6 FLOPs or 2 bytes per parameter per token).

Sync time of B = 2P bytes (bfloat16) to E engine nodes:
* CUDA IPC (roles colocated on each GPU): the engine maps the trainer's memory; a device-to-device copy of its
  tensor-parallel shard, B / TP at DEVICE_COPY_GBPS, plus IPC_FIXED_S.
* NCCL broadcast: B at NCCL_GBPS, calibrated on verl's "under 0.3 s for a 7B model" (14 GB / 0.3 s), plus a
  ZeRO-3 gather of the same bytes at the same rate for the bucket-by-bucket path.
* Object store: rank 0 copies to host memory (B / PCIE_GBPS), Ray stores it (B / PUT_GBPS, the rate measured on
  this machine by benchmarks/weight_sync.py), every engine node pulls it from the one sending node
  (E x B / NIC_GBPS) and copies it to its GPUs (B / PCIE_GBPS). Two put rates: the end-to-end rate measured
  here (2 vCPUs, float32, the CPU engine's reload included: a pessimistic bound) and HOST_PUT_GBPS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

R_ON_8B, R_OFF_8B = 1581.0, 2478.0  # tokens/s/GPU, NeMo-RL GRPO Llama-3.1-8B, 16x H100 (published)
NCCL_GBPS = 14.0 / 0.3  # verl: NCCL weight sync of a 7B model under 0.3 s
DEVICE_COPY_GBPS, IPC_FIXED_S = 1000.0, 0.05  # H100 device-to-device copy (~half of HBM3 bandwidth); handle setup
PCIE_GBPS, NIC_GBPS = 25.0, 25.0  # PCIe Gen5 x16 achieved host<->device; a 200 Gb/s node NIC
HOST_PUT_GBPS = 5.0  # assumed: Ray's put on a GPU node is one memory copy into shared memory
GPUS_PER_NODE = 8


def tp_efficiency(params_b: float) -> float:
    """Tensor parallelism's toll once a model needs it (70B: TP 8 within a node), an assumed 0.8."""
    return 0.8 if params_b > 20 else 1.0


def tensor_parallel(params_b: float) -> int:
    return 8 if params_b > 20 else 1


def sync_seconds(transport: str, params_b: float, gpus: int, put_gbps: float) -> float:
    size_gb = 2 * params_b  # bfloat16
    engine_nodes = max(1, gpus // GPUS_PER_NODE)
    if transport == "cuda-ipc":
        return size_gb / tensor_parallel(params_b) / DEVICE_COPY_GBPS + IPC_FIXED_S
    if transport == "nccl":
        return 2 * size_gb / NCCL_GBPS  # ZeRO-3 gather + broadcast, bucket by bucket
    if transport == "object-store":
        return size_gb / PCIE_GBPS + size_gb / put_gbps + engine_nodes * size_gb / NIC_GBPS + size_gb / PCIE_GBPS
    raise ValueError(transport)


def predict(params_b: float, gpus: int, tokens: float, transport: str, one_step_off: bool, put_gbps: float) -> dict:
    rate = (R_OFF_8B if one_step_off else R_ON_8B) * 8.0 / params_b * tp_efficiency(params_b)
    compute = tokens / (gpus * rate)
    sync = sync_seconds(transport, params_b, gpus, put_gbps)
    step = compute + sync - sync_seconds("nccl", params_b, gpus, put_gbps)
    return {"step_s": step, "sync_s": sync, "tokens_per_s_per_gpu": tokens / step / gpus, "sync_share": sync / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--response-tokens", type=int, default=1024)
    parser.add_argument("--sync-results", default="benchmarks/results/weight_sync.json",
                        help="benchmarks/weight_sync.py's output: the object store's measured rate")
    parser.add_argument("--out", default="benchmarks/results/scaling_model.md")
    args = parser.parse_args()
    tokens = args.prompts * args.samples * (args.prompt_tokens + args.response_tokens)
    measured = json.loads(Path(args.sync_results).read_text())
    largest = max(measured["models"], key=lambda m: m["bytes"])
    put_gbps = largest["bytes"] / largest["transports"]["objectStore"]["transfer_s"] / 1e9
    rows = ["| model | GPUs | transport | sync (s) | on-policy: tokens/s/GPU | sync share | one step off: "
            "tokens/s/GPU | sync share |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for params_b, gpu_counts in ((7.0, (8, 16, 64)), (70.0, (16, 64, 256))):
        for gpus in gpu_counts:
            for transport, put in (("cuda-ipc", put_gbps), ("nccl", put_gbps), ("object-store", HOST_PUT_GBPS),
                                   ("object-store", put_gbps)):
                on = predict(params_b, gpus, tokens, transport, False, put)
                off = predict(params_b, gpus, tokens, transport, True, put)
                label = f"object store, put {put:.2g} GB/s" if transport == "object-store" else transport
                rows.append(f"| {params_b:g}B | {gpus} | {label} | {on['sync_s']:.2f} | "
                            f"{on['tokens_per_s_per_gpu']:,.0f} | {on['sync_share']:.1%} | "
                            f"{off['tokens_per_s_per_gpu']:,.0f} | {off['sync_share']:.1%} |")
    text = "\n".join([
        "# Scaling model: one online RL step, by weight-sync transport", "",
        f"Generated by `benchmarks/scaling_model.py` (a model, not a measurement; see docs/scaling.md). Step: "
        f"{args.prompts} prompts x {args.samples} samples x ({args.prompt_tokens} + {args.response_tokens}) tokens "
        f"= {tokens / 1e6:.1f}M tokens. Object-store put rate {put_gbps:.2f} GB/s, measured by "
        f"benchmarks/weight_sync.py ({largest['model']}, {largest['bytes'] / 1e6:.0f} MB) on {measured['machine']}.",
        "", *rows, "",
        f"Constants: R(8B) on-policy {R_ON_8B:,.0f} and one step off {R_OFF_8B:,.0f} tokens/s/GPU (NeMo-RL, 16x "
        f"H100); NCCL {NCCL_GBPS:.0f} GB/s (verl, 7B under 0.3 s); device copy {DEVICE_COPY_GBPS:.0f} GB/s + "
        f"{IPC_FIXED_S} s; Ray put {HOST_PUT_GBPS:g} GB/s or as measured; PCIe {PCIE_GBPS:.0f} GB/s; NIC {NIC_GBPS:.0f} GB/s; {GPUS_PER_NODE} GPUs per node; 70B "
        "runs tensor-parallel 8 at 0.8 efficiency.", ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

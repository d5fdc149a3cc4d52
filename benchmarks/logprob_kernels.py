#!/usr/bin/env python
"""Log-probs and entropy of a policy-update micro-batch on a GPU: KubeRLHF's kernels now vs before.

Before (up to commit cf05696): log-probs as `gather(z) - logsumexp(z)` on a float32 copy z of the logits (torch's
logsumexp is several full-size passes, and its backward one more), entropy as `logsumexp(z) - sum(softmax(z) z)`
over the whole [B, T, V] tensor. Now (`kuberlhf.algorithms.token_logprobs` / `entropy_from_logits`): one fused
`log_softmax` forward and backward plus a gather; entropy without gradient, 1024 tokens at a time.

Shape: a micro-batch of 8 responses x 768 tokens over a 151,936-token vocabulary (Qwen2.5's), bf16 logits.
Timed: log-probs forward + backward + entropy, median of 7 after 2 warm-ups; peak GPU memory; the largest
difference between the two results. Needs a CUDA GPU; nothing is asserted (a benchmark).

Run: python benchmarks/logprob_kernels.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))
from kuberlhf.algorithms import entropy_from_logits, token_logprobs  # noqa: E402

BATCH, RESPONSE, VOCAB = 8, 768, 151936


def previous_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    z = logits.float()
    return torch.gather(z, -1, tokens.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, -1)


def previous_entropy(logits: torch.Tensor) -> torch.Tensor:
    z = logits.float()
    return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)


def main() -> None:
    torch.manual_seed(0)
    base = (torch.randn(BATCH, RESPONSE, VOCAB, device="cuda") * 3).to(torch.bfloat16)
    tokens = torch.randint(0, VOCAB, (BATCH, RESPONSE), device="cuda")

    def step(logprobs_fn, entropy_fn):
        logits = base.clone().requires_grad_(True)
        logprobs = logprobs_fn(logits, tokens)
        entropy = entropy_fn(logits.detach())
        logprobs.sum().backward()
        return logprobs.detach(), entropy

    results = {}
    for name, logprobs_fn, entropy_fn in [("before", previous_logprobs, previous_entropy),
                                          ("now", token_logprobs, entropy_from_logits)]:
        for _ in range(2):
            step(logprobs_fn, entropy_fn)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(7):
            torch.cuda.synchronize()
            started = time.perf_counter()
            outputs = step(logprobs_fn, entropy_fn)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        results[name] = (statistics.median(times), torch.cuda.max_memory_allocated() / 2**30, outputs)
        print(f"{name}: {results[name][0] * 1e3:.1f} ms per micro-batch (log-probs fwd+bwd, entropy), "
              f"peak {results[name][1]:.1f} GiB", flush=True)
    (lp0, h0), (lp1, h1) = results["before"][2], results["now"][2]
    print(f"speed-up {results['before'][0] / results['now'][0]:.2f}x; max |log-prob diff| "
          f"{float((lp1 - lp0).abs().max()):.1e}, max |entropy diff| {float((h1 - h0).abs().max()):.1e}")


if __name__ == "__main__":
    main()

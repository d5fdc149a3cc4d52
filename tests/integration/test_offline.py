"""The offline stages run on Ray Train and learn on the addition task: DPO (with its NLL term) and SFT raise
held-out sampled accuracy, a reward model ranks held-out pairs, KTO separates its implicit rewards, and a
2-worker ZeRO-2 DPO run (DeepSpeed inside Ray Train's process group) trains too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kuberlhf.jobfile import load_job
from kuberlhf.tasks.addition import make_offline_rows, read_jsonl

from .conftest import EXAMPLES, heldout_sampled_accuracy

pytestmark = pytest.mark.slow


def run_offline(assets: dict[str, str], output_dir: Path, algorithm: str, data: str, *overrides: str) -> dict:
    from kuberlhf.launcher import run_job

    job = load_job(EXAMPLES / "dpo-tiny.yaml", [
        f"spec.algorithm={algorithm}", f"spec.policy.model={assets['model']}", f"spec.data.train={data}",
        f"spec.output.dir={output_dir}", "spec.dpo=" if algorithm != "dpo" else "spec.dpo.beta=0.1", *overrides,
    ])
    return run_job(job, dashboard=False)


def last_metrics(summary: dict[str, Any]) -> dict[str, float]:
    lines = Path(summary["metrics_file"]).read_text().splitlines()
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def start_accuracy(assets) -> float:
    return heldout_sampled_accuracy(assets["model"], assets["eval"])


def test_dpo_with_its_nll_term_raises_heldout_accuracy(assets, tmp_path, start_accuracy):
    summary = run_offline(assets, tmp_path, "dpo", assets["pairs"])
    final = heldout_sampled_accuracy(summary["final_model"], assets["eval"])
    print(f"dpo: held-out sampled accuracy {start_accuracy:.3f} -> {final:.3f}")
    assert final >= start_accuracy + 0.05


def test_sft_raises_heldout_accuracy(assets, tmp_path, start_accuracy):
    summary = run_offline(assets, tmp_path, "sft", assets["sft"], "spec.training.learningRate=0.0003")
    final = heldout_sampled_accuracy(summary["final_model"], assets["eval"])
    first = json.loads(Path(summary["metrics_file"]).read_text().splitlines()[0])["loss"]
    print(f"sft: held-out sampled accuracy {start_accuracy:.3f} -> {final:.3f}; loss {first:.3f} -> "
          f"{last_metrics(summary)['loss']:.3f}")
    assert final >= start_accuracy + 0.05


def test_reward_model_ranks_heldout_pairs_and_is_accepted_as_a_reward_model(assets, tmp_path):
    from transformers import AutoTokenizer

    from kuberlhf.models.loading import is_sequence_classifier, load_reward_model

    summary = run_offline(assets, tmp_path, "rm", assets["pairs"], "spec.training.learningRate=0.001",
                          "spec.training.epochs=2")
    model = load_reward_model(summary["final_model"])  # what spec.reward.model loads
    tokenizer = AutoTokenizer.from_pretrained(summary["final_model"])
    pairs = make_offline_rows(read_jsonl(assets["eval"]), seed=1)["pairs"]
    with torch.no_grad():
        def score(key: str) -> torch.Tensor:
            texts = [p["prompt"] + p[key] + tokenizer.eos_token for p in pairs]
            encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
            return model(**encoded).logits[:, 0]
        accuracy = float((score("chosen") > score("rejected")).float().mean())
    print(f"rm: held-out pair accuracy {accuracy:.3f}")
    assert is_sequence_classifier(summary["final_model"])  # what spec.critic.model starts a value head from
    assert accuracy >= 0.7


def test_kto_separates_desirable_from_undesirable_completions(assets, tmp_path, start_accuracy):
    summary = run_offline(assets, tmp_path, "kto", assets["labels"], "spec.kto.beta=0.1")
    metrics = last_metrics(summary)
    final = heldout_sampled_accuracy(summary["final_model"], assets["eval"])
    print(f"kto: implicit rewards desirable {metrics['desirable_reward']:.3f}, undesirable "
          f"{metrics['undesirable_reward']:.3f}; held-out sampled accuracy {start_accuracy:.3f} -> {final:.3f}")
    assert metrics["desirable_reward"] > metrics["undesirable_reward"]
    assert final >= start_accuracy


def test_dpo_on_two_zero2_workers(assets, tmp_path, start_accuracy):
    summary = run_offline(assets, tmp_path, "dpo", assets["pairs"], "spec.training.zeroStage=2",
                          "spec.resources.policy.workers=2")
    final = heldout_sampled_accuracy(summary["final_model"], assets["eval"])
    print(f"dpo, ZeRO-2 x 2 workers: held-out sampled accuracy {start_accuracy:.3f} -> {final:.3f}")
    assert final >= start_accuracy + 0.05

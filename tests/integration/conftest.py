"""Shared fixtures for integration tests: the tiny addition model (built once per session) and a helper that
runs an example job in-process on an embedded Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kuberlhf.jobfile import load_job
from kuberlhf.tasks.addition import build_demo_assets, read_jsonl, sampled_accuracy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, str]:
    return build_demo_assets(tmp_path_factory.mktemp("addition-assets"), seed=0)


def run_example(name: str, assets: dict[str, str], output_dir: Path, *overrides: str,
                chat: bool = False) -> dict[str, Any]:
    """Run examples/<name>.yaml on the test assets; returns the run summary. With `chat`, the prompts are
    conversations (TRL's format) that the model's chat template renders as the plain prompts."""
    from kuberlhf.launcher import run_job

    prefix = "chat_" if chat else ""
    job = load_job(EXAMPLES / f"{name}.yaml", [
        f"spec.policy.model={assets['model']}",
        f"spec.data.train={assets[prefix + 'train']}",
        f"spec.data.eval={assets[prefix + 'eval']}",
        f"spec.output.dir={output_dir}",
        *overrides,
    ])
    return run_job(job, dashboard=False)


def heldout_sampled_accuracy(model_dir: str, eval_file: str, samples_per_prompt: int = 4) -> float:
    """Exact-match accuracy of sampled completions (temperature 1, 4 per prompt) on the held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sampled_accuracy(model, tokenizer, read_jsonl(eval_file), samples_per_prompt=samples_per_prompt,
                            temperature=1.0, seed=1234)

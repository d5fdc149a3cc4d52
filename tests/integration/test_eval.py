"""`kuberlhf eval`: with the run's own job file, a run's final model gets exactly the run's last held-out
reward (the same prompts, sampling settings, seed, vLLM engine and reward function), and every sample lands in
the --output file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, run_example

pytestmark = pytest.mark.slow


def test_eval_of_a_finished_run_repeats_its_last_evaluation(assets, tmp_path):
    settings = (f"spec.policy.model={assets['model']}", f"spec.data.train={assets['train']}",
                f"spec.data.eval={assets['eval']}", f"spec.output.dir={tmp_path / 'run'}",
                "spec.training.steps=2", "spec.training.kl.coef=0", "spec.rollout.samplesPerPrompt=2")
    summary = run_example("grpo-tiny", assets, tmp_path / "run", *settings[4:])
    samples = tmp_path / "samples.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "kuberlhf.cli", "eval", str(EXAMPLES / "grpo-tiny.yaml"), "--json",
         "--output", str(samples), *(arg for setting in settings for arg in ("--set", setting))],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    prompts = sum(1 for _ in open(assets["eval"]))
    assert result["model"] == summary["final_model"]  # the run's final model, by default
    assert result["reward_mean"] == summary["eval"]["eval/reward_mean_end"]  # exactly: the same evaluation
    assert (result["prompts"], result["samples"]) == (prompts, 2 * prompts)
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 * prompts and set(rows[0]) == {"prompt", "completion", "reward"}
    assert sum(row["reward"] for row in rows) / len(rows) == pytest.approx(result["reward_mean"])

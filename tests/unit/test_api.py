"""The Python API (`kuberlhf.run`, `kuberlhf.load_job`): what `kuberlhf run` takes, from a file or a dict, with
--set-style overrides; a mistake is a UserError naming the field; importing kuberlhf imports neither torch nor
Ray. A job really run through `kuberlhf.run`: every integration test (tests/integration/conftest.run_example)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import kuberlhf

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOB = {"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "api"},
       "spec": {"algorithm": "grpo", "policy": {"model": "m"}, "data": {"train": "t.jsonl"},
                "reward": {"function": "rewards:f"}}}


def test_a_dict_with_overrides_is_a_job_and_the_dict_is_left_alone():
    job = kuberlhf.load_job(JOB, "spec.training.steps=7", "spec.rollout.temperature=0.7")
    assert (job.spec.training.steps, job.spec.rollout.temperature) == (7, 0.7)
    assert "training" not in JOB["spec"]


def test_a_file_reads_as_the_cli_reads_it():
    job = kuberlhf.load_job(EXAMPLES / "grpo-tiny.yaml", "spec.training.steps=3")
    assert job.metadata.name == "grpo-tiny" and job.spec.training.steps == 3


def test_mistakes_are_user_errors_naming_the_field():
    with pytest.raises(kuberlhf.UserError, match=r"spec.training.learningRate: must be > 0, got -1"):
        kuberlhf.load_job(JOB, "spec.training.learningRate=-1")
    with pytest.raises(kuberlhf.UserError, match="overrides apply to a job file or dict"):
        kuberlhf.run(kuberlhf.load_job(JOB), "spec.training.steps=1")


def test_importing_kuberlhf_stays_light():
    code = "import sys, kuberlhf; print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"

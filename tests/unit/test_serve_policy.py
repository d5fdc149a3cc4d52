"""What `kuberlhf serve-policy` serves and how it starts vLLM (the server itself: tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuberlhf.errors import UserError
from kuberlhf.serve.policy import policy_directory, served_name, vllm_command


def model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_a_run_dir_serves_its_final_model_under_the_jobs_name(tmp_path):
    final = model_dir(tmp_path / "run" / "final")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"job": "grpo-math"}))
    assert policy_directory(str(tmp_path / "run")) == final.resolve()
    assert served_name(final) == "grpo-math"
    assert served_name(model_dir(tmp_path / "elsewhere" / "my-model")) == "my-model"


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such directory"),
    (lambda p: (p.mkdir(), (p / "adapter_config.json").write_text("{}")),
     "holds a LoRA adapter alone; run the job with output.mergeLora: true"),
    (lambda p: p.mkdir(), "is not a Hugging Face model directory"),
])
def test_what_cannot_be_served_is_named(tmp_path, make, message):
    make(tmp_path / "final")
    with pytest.raises(UserError, match=message):
        policy_directory(str(tmp_path / "final"))


def test_on_the_cpu_vllm_runs_as_the_rollout_engines_do():
    command = vllm_command(Path("/m"), "job", "127.0.0.1", 8001, 64, None, on_gpu=False)
    assert command[1:6] == ["-m", "vllm.entrypoints.launchers.api_server.entry", "--model", "/m",
                            "--served-model-name"]
    assert {"--dtype", "float32", "--enforce-eager", "--max-model-len", "64"} <= set(command)
    assert "--api-key" not in command and "--enforce-eager" not in vllm_command(Path("/m"), "job", "h", 1, None,
                                                                                 "k", on_gpu=True)

"""The kuberlhf command line: exit codes and messages for users (no tracebacks for their mistakes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kuberlhf.cli import main

JOB = """\
apiVersion: kuberlhf.io/v1alpha1
kind: RLHFJob
metadata: {{name: demo}}
spec:
  algorithm: grpo
  policy: {{model: {model}}}
  reward: {{function: "{function}"}}
  data: {{train: {train}}}
  training: {{promptsPerStep: 1}}
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama, save_model_dir

    tokenizer = build_char_tokenizer("0123456789+= hi")
    return save_model_dir(build_tiny_llama(tokenizer, max_position_embeddings=256), tokenizer,
                          tmp_path_factory.mktemp("model"))


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").symlink_to(tiny_model)
    (tmp_path / "train.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "rewards.py").write_text("def f(prompts, completions, **c):\n    return [0.0] * len(completions)\n")
    return tmp_path


def write_job(path, model="./model", function="rewards:f", train="train.jsonl"):
    path.write_text(JOB.format(model=model, function=function, train=train))
    return str(path)


def test_validate_accepts_a_good_job(workspace, capsys):
    assert main(["validate", write_job(workspace / "job.yaml")]) == 0
    assert "job.yaml: ok (grpo, 100 steps)" in capsys.readouterr().out


def test_validate_reports_a_missing_model_directory(workspace, capsys):
    assert main(["validate", write_job(workspace / "job.yaml", model="./missing")]) == 1
    assert "spec.policy.model: model directory './missing' does not exist" in capsys.readouterr().err


def test_a_mistyped_local_path_is_not_taken_for_a_hub_id(workspace, capsys):
    (workspace / "runs" / "sft-model").mkdir(parents=True)
    assert main(["validate", write_job(workspace / "job.yaml", model="runs/sft-modle")]) == 1
    assert ("error: spec.policy.model: model directory 'runs/sft-modle' does not exist; did you mean "
            "'runs/sft-model'?") in capsys.readouterr().err


def test_a_name_read_as_a_hub_id_is_said_so(workspace, capsys):
    from kuberlhf.preflight import resolve_model

    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", "spec.policy.model") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert ("note: spec.policy.model: 'HuggingFaceTB/SmolLM2-135M-Instruct' is no local directory here, so it is "
            "read as a Hugging Face Hub id") in capsys.readouterr().err


@pytest.mark.parametrize("labels, message", [
    (None, r"is a LlamaForCausalLM model, not a reward model: that needs a one-output score head"),
    (2, r"has 2 labels; a reward model has exactly 1"),
])
def test_validate_refuses_a_reward_model_without_a_one_output_score_head(workspace, capsys, tiny_model, labels,
                                                                         message):
    import re
    import shutil

    from transformers import AutoConfig, AutoModelForSequenceClassification

    reward = workspace / "reward"
    if labels is None:  # the policy itself: a causal LM
        shutil.copytree(tiny_model, reward)
    else:
        config = AutoConfig.from_pretrained(tiny_model, num_labels=labels)
        AutoModelForSequenceClassification.from_config(config).save_pretrained(reward)
    job = write_job(workspace / "job.yaml")
    text = (workspace / "job.yaml").read_text().replace('reward: {function: "rewards:f"}', "reward: {model: ./reward}")
    (workspace / "job.yaml").write_text(text)
    assert main(["validate", job]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"^error: spec.reward.model: .*/reward {message}", err, re.M), err
    assert main(["serve-reward", "--model", str(reward)]) == 1
    assert re.search(rf"^error: --model: .*/reward {message}", capsys.readouterr().err, re.M)


def test_validate_reports_a_missing_data_file(workspace, capsys):
    assert main(["validate", write_job(workspace / "job.yaml", train="nope.jsonl")]) == 1
    assert "spec.data.train: nope.jsonl: no such file or directory" in capsys.readouterr().err


def test_validate_reports_a_reward_function_that_does_not_import(workspace, capsys):
    assert main(["validate", write_job(workspace / "job.yaml", function="rewards:g")]) == 1
    assert "spec.reward.function: module 'rewards' has no attribute 'g'" in capsys.readouterr().err


def test_schema_only_skips_file_checks(workspace):
    assert main(["validate", "--schema-only", write_job(workspace / "job.yaml", model="./missing")]) == 0


def test_validate_checks_every_file_and_fails_if_any_fails(workspace, capsys):
    good = write_job(workspace / "good.yaml")
    bad = write_job(workspace / "bad.yaml", train="nope.jsonl")
    assert main(["validate", good, bad]) == 1
    captured = capsys.readouterr()
    assert "good.yaml: ok" in captured.out and "nope.jsonl" in captured.err


def test_run_with_an_invalid_override_exits_1_without_traceback(workspace):
    job = write_job(workspace / "job.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "kuberlhf.cli", "run", job, "--set", "spec.training.learningRate=-1"],
        capture_output=True, text=True, cwd=workspace,
    )
    assert result.returncode == 1
    assert "spec.training.learningRate: must be > 0, got -1" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_data_row_stops_before_ray_starts(workspace):
    (workspace / "train.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    result = subprocess.run([sys.executable, "-m", "kuberlhf.cli", "run", write_job(workspace / "job.yaml")],
                            capture_output=True, text=True, cwd=workspace)
    assert result.returncode == 1
    assert "train.jsonl:2: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr and "Ray" not in result.stderr


def test_help_describes_every_command(capsys):
    for command in ("run", "validate", "demo-assets", "spec-docs", "crd", "init", "serve-reward", "serve-policy", "report",
                    "metrics-docs"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        assert "usage: kuberlhf " + command in capsys.readouterr().out


def test_version_names_the_package_and_the_libraries_a_run_uses(capsys):
    from importlib import metadata

    from kuberlhf import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    first, libraries = capsys.readouterr().out.splitlines()
    assert first == f"kuberlhf {__version__}" == f"kuberlhf {metadata.version('kuberlhf')}"
    assert f"torch {metadata.version('torch')}" in libraries and f"ray {metadata.version('ray')}" in libraries
    assert "vllm" in libraries and "deepspeed" in libraries


def test_crd_prints_the_generated_definition(capsys):
    import yaml

    assert main(["crd"]) == 0
    crd = yaml.safe_load(capsys.readouterr().out)
    assert crd["kind"] == "CustomResourceDefinition" and crd["metadata"]["name"] == "rlhfjobs.kuberlhf.io"


def test_a_user_error_inside_a_ray_train_worker_is_found_behind_the_training_failure():
    from ray.train import WorkerGroupError

    from kuberlhf.errors import UserError, user_error_in

    failure = WorkerGroupError("rank 0 failed", {0: UserError("spec.policy.lora.quantize: needs a GPU")})
    found = user_error_in(failure)
    assert isinstance(found, UserError) and str(found) == "spec.policy.lora.quantize: needs a GPU"
    assert user_error_in(WorkerGroupError("rank 0 failed", {0: RuntimeError("a bug")})) is None


def test_a_dead_ray_train_worker_is_summed_up_in_one_line_naming_its_rank():
    from ray.train import WorkerGroupError

    from kuberlhf.errors import first_line

    death = RuntimeError("A worker health check failed.\nWorker info: Worker(\n  pid=14504,\n)\n"
                         "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR")
    failure = WorkerGroupError("Training failed due to worker errors:", {1: ValueError("x"), 0: death})
    assert first_line(failure) == "rank 0: The actor is dead because its worker process has died. Worker exit " \
                                  "type: SYSTEM_ERROR"
    assert first_line(RuntimeError("first\nsecond")) == "first"
    assert first_line(RuntimeError()) == "RuntimeError"


def test_a_dead_worker_is_restarted_within_the_budget_and_a_user_error_never():
    from ray.train import WorkerGroupError

    from kuberlhf.errors import UserError, restart_or_fail

    died = WorkerGroupError("failed", {0: RuntimeError("The actor is dead because its worker process has died.")})
    assert restart_or_fail(died, 0, 2, "runs/x/checkpoints", "a worker") == 1
    with pytest.raises(UserError, match=r"^training.maxRestarts: a worker died again after 2 restarts \(rank 0: "
                                        r"The actor is dead.*\); the newest checkpoint is in runs/x/checkpoints$"):
        restart_or_fail(died, 2, 2, "runs/x/checkpoints", "a worker")
    refused = WorkerGroupError("failed", {0: UserError("spec.policy.model: no such model")})
    with pytest.raises(UserError, match=r"^spec.policy.model: no such model$"):
        restart_or_fail(refused, 0, 2, "runs/x/checkpoints", "a worker")


@pytest.mark.parametrize("module, source, message", [
    ("exits_on_import", "import sys\nsys.exit(3)\n", "importing 'exits_on_import' called sys.exit(3)"),
    ("needs_gold", "def f(prompts, completions, gold):\n    return []\n",
     "spec.reward.function: needs_gold:f requires 'gold', which it is never given"),
    ("positional", "def f(prompts, completions, /):\n    return []\n", "takes 'prompts' positionally only"),
])
def test_validate_refuses_reward_functions_that_run_would_refuse(workspace, capsys, module, source, message):
    (workspace / f"{module}.py").write_text(source)  # a module name of its own: imports are cached
    assert main(["validate", write_job(workspace / "job.yaml", function=f"{module}:f")]) == 1
    assert message in capsys.readouterr().err


def test_validate_no_import_runs_none_of_the_jobs_code(workspace, capsys):
    (workspace / "side_effects.py").write_text("open('imported', 'w').close()\ndef f(**kw):\n    return []\n")
    job = write_job(workspace / "job.yaml", function="side_effects:f")
    assert main(["validate", "--no-import", job]) == 0
    assert not (workspace / "imported").exists()
    assert main(["validate", job]) == 0 and (workspace / "imported").exists()


def test_validate_refuses_long_prompts_and_unreachable_output_storage(workspace, capsys):
    job = write_job(workspace / "job.yaml")
    assert main(["validate", job, "--set", "spec.data.maxPromptTokens=1"]) == 1
    assert "train.jsonl:1: prompt is 2 tokens, longer than spec.data.maxPromptTokens = 1" in capsys.readouterr().err
    assert main(["validate", job, "--set", "spec.output.uri=nosuchprotocol://bucket/run"]) == 1
    assert "spec.output.uri: cannot open nosuchprotocol://bucket/run" in capsys.readouterr().err


@pytest.mark.parametrize("extra, args, message", [
    ("", ["--output", "train.jsonl"], "--output: train.jsonl exists; choose another file (nothing was overwritten)"),
    ("", [], "spec.data.eval: not set; pass --data FILE"),
    ("", ["--data", "missing.jsonl"], "--data"),
    ("", ["--stage", "rm"], "--stage: no stage is named 'rm' (the job's stages: none)"),
    ("  algorithm: dpo\n", [], "spec.algorithm: dpo trains without a reward"),
])
def test_eval_refuses_what_it_cannot_evaluate_in_one_line_before_ray_starts(workspace, capsys, extra, args, message):
    write_job(workspace / "job.yaml")
    if extra:  # the offline job of the same model and data
        text = (workspace / "job.yaml").read_text().replace("  algorithm: grpo\n", extra)
        text = text.replace('  reward: {function: "rewards:f"}\n', "").replace("  training: {promptsPerStep: 1}\n", "")
        (workspace / "job.yaml").write_text(text)
    assert main(["eval", "job.yaml", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()

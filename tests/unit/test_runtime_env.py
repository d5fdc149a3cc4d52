"""`spec.runtimeEnv`: Ray's runtime_env from the spec (the job's own variables kept), the driver's checks
importing the reward function as the workers will, and output paths that stay the driver's."""

from __future__ import annotations

import os

import pytest

from kuberlhf.cli import main
from kuberlhf.jobfile import load_job
from kuberlhf.launcher import anchor_local_dirs

from .test_cli import tiny_model, workspace, write_job  # noqa: F401 (fixtures)


def with_runtime_env(path, text: str) -> None:
    path.write_text(path.read_text() + f"  runtimeEnv: {text}\n")


def test_the_spec_becomes_rays_runtime_env_and_the_jobs_own_variables_win(workspace):
    job_file = write_job(workspace / "job.yaml")
    with_runtime_env(workspace / "job.yaml",
                     '{workingDir: code, pyModules: [libs/helpers], pip: ["math-verify==0.8.0"], '
                     'envVars: {REWARD_MODE: strict}, excludes: ["*.ckpt"]}')
    env = load_job(job_file).spec.runtime_env.to_ray({"PYTHONPATH": "/here"})
    assert env == {"env_vars": {"REWARD_MODE": "strict", "PYTHONPATH": "/here"}, "working_dir": "code",
                   "py_modules": ["libs/helpers"], "pip": ["math-verify==0.8.0"], "excludes": ["*.ckpt"]}
    assert load_job(write_job(workspace / "plain.yaml")).spec.runtime_env.to_ray({"A": "1"}) == {"env_vars": {"A": "1"}}


@pytest.mark.parametrize("env, message", [
    ("{envVars: {PYTHONPATH: /x}}", "runtimeEnv.envVars: PYTHONPATH is set by the job itself"),
    ("{envVars: {'1BAD': x}}", "runtimeEnv.envVars: '1BAD' is not an environment variable name"),
    ("{workingDir: nowhere}", "spec.runtimeEnv.workingDir: directory 'nowhere' does not exist"),
    ("{pyModules: [a, missing]}", "spec.runtimeEnv.pyModules[1]: directory 'missing' does not exist"),
])
def test_a_bad_runtime_env_is_one_line_naming_the_field(workspace, capsys, env, message):
    (workspace / "a").mkdir()
    write_job(workspace / "job.yaml")
    with_runtime_env(workspace / "job.yaml", env)
    assert main(["validate", "job.yaml"]) == 1
    assert message in capsys.readouterr().err


def test_the_driver_imports_the_reward_function_from_the_working_dir_as_the_workers_will(workspace, capsys):
    code = workspace / "code"
    code.mkdir()
    (workspace / "rewards.py").rename(code / "shipped_rewards.py")
    write_job(workspace / "job.yaml", function="shipped_rewards:f")
    assert main(["validate", "job.yaml"]) == 1  # not importable from where the driver runs
    assert "shipped_rewards" in capsys.readouterr().err
    with_runtime_env(workspace / "job.yaml", "{workingDir: code}")
    assert main(["validate", "job.yaml"]) == 0, capsys.readouterr().err


def test_a_module_only_pip_provides_is_left_to_the_workers_with_a_note(workspace, capsys):
    write_job(workspace / "job.yaml", function="verifier_from_pip:reward")
    with_runtime_env(workspace / "job.yaml", '{pip: ["verifier-from-pip==1.0"]}')
    assert main(["validate", "job.yaml"]) == 0
    assert "runtimeEnv.pip may provide it: the workers check it when they start" in capsys.readouterr().err


def test_with_a_working_dir_relative_output_paths_are_anchored_at_the_drivers_directory(workspace):
    job = load_job(write_job(workspace / "job.yaml"))
    assert anchor_local_dirs(job) is job  # no working dir: nothing changes
    with_runtime_env(workspace / "job.yaml", "{workingDir: code}")
    (workspace / "job.yaml").write_text((workspace / "job.yaml").read_text() +
                                        "  checkpoint: {dir: ckpt}\n  output: {uri: 's3://b/x'}\n")
    anchored = anchor_local_dirs(load_job(str(workspace / "job.yaml")))
    assert anchored.output_dir == os.path.join(str(workspace), "runs", "demo")
    assert anchored.checkpoint_dir == os.path.join(str(workspace), "ckpt")
    assert anchored.spec.output.uri == "s3://b/x"

"""What survives what. A driver killed with SIGKILL mid-run, run again with the same command, resumes from its
newest checkpoint, sees the same batches in the same order and ends with the weights of an uninterrupted run;
SIGTERM checkpoints at the step boundary and exits, and a rerun with changed settings is refused. A worker
actor killed mid-run is replaced: the job rebuilds its workers from the newest checkpoint and ends with those
same weights. The same holds for an offline stage's Ray Train worker. (Each test chains several interruptions
of one run: every run of the embedded Ray costs half a minute of start-up on 2 cores.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow

# The same reward as the example's, slowed down by an environment variable only the run we kill sets, so it is
# surely killed between two checkpoints; the job file and the command are identical for every run.
# With KUBERLHF_TEST_HANG_ONCE naming a file, the first call that finds the file removes it and hangs (a rollout
# worker stuck in user code), so the call after the job replaced its workers goes through.
SLOW_REWARD = """import os, time
from kuberlhf.tasks.addition import exact_match_reward

def reward(prompts, completions, **columns):
    time.sleep(float(os.environ.get("KUBERLHF_TEST_SLOW_REWARD", "0")))
    hang = os.environ.get("KUBERLHF_TEST_HANG_ONCE")
    if hang and os.path.exists(hang):
        os.remove(hang)
        time.sleep(3600)
    return exact_match_reward(prompts, completions, **columns)
"""


def kuberlhf_run(assets, workdir: Path, output: Path, env: dict[str, str] | None = None,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / "ppo-tiny.yaml"), "--no-dashboard",
         "--set", f"spec.policy.model={assets['model']}", "--set", f"spec.data.train={assets['train']}",
         "--set", "spec.data.eval=", "--set", f"spec.output.dir={output}", "--set", "spec.metrics.port=0",
         "--set", "spec.reward.function=slow_reward:reward", "--set", "spec.training.steps=8",
         "--set", "spec.checkpoint.everySteps=3", "--set", "spec.checkpoint.keep=1",
         *(arg for setting in extra for arg in ("--set", setting))],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})},
    )


def steps_logged(output: Path) -> list[int]:
    metrics = output / "metrics.jsonl"
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []


def finish(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout + stderr


OUR_LINES = re.compile(r"^(RLHFJob |Prometheus metrics at |step \d+/\d+  |resuming from "
                       r"|[┏┃┡│└].*[┓┃┩│┘]$)")


def third_party_lines(output: str) -> list[str]:
    """The lines of a run's terminal output that are not KubeRLHF's own (progress, notes, the summary table):
    by default libraries and Ray workers write to run.log only; and no colour codes in a pipe."""
    return [line for line in output.splitlines() if "\x1b[" in line or not OUR_LINES.match(line)]


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory) -> tuple[Path, Path]:
    """(working directory with the slow reward, output of a run nobody interrupted)."""
    workdir = tmp_path_factory.mktemp("reliability")
    (workdir / "slow_reward.py").write_text(SLOW_REWARD)
    output = finish(kuberlhf_run(assets, workdir, workdir / "straight"))  # the demo's job, from the command line
    assert third_party_lines(output) == []
    assert "WARNING" in (workdir / "straight" / "run.log").read_text()  # vLLM's own, kept for whoever looks
    return workdir, workdir / "straight"


def wait_for_steps(process: subprocess.Popen, output: Path, steps: int) -> None:
    deadline = time.monotonic() + 300
    while len(steps_logged(output)) < steps and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)


def assert_same_final_weights(output: Path, straight: Path) -> None:
    a = load_file(f"{straight}/final/model.safetensors")
    b = load_file(f"{output}/final/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def assert_same_run(output: Path, straight: Path) -> None:
    """Every step logged once, steps 4-8 as the uninterrupted run's, the same final weights."""
    assert steps_logged(output) == list(range(1, 9))  # every step once: none skipped, none repeated
    records = {r["step"]: r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())}
    expected = {r["step"]: r for r in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines())}
    for step in range(4, 9):  # the same prompts, samples and rewards as the uninterrupted run's steps
        assert records[step]["reward/mean"] == expected[step]["reward/mean"], step
        assert records[step]["response_length/mean"] == expected[step]["response_length/mean"], step
    assert_same_final_weights(output, straight)


def slow_run_past_step_4(assets, uninterrupted, name: str, env: dict[str, str] | None = None,
                         extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path, Path]:
    """(the running driver, its output, the uninterrupted run's output) once step 4 is logged."""
    workdir, straight = uninterrupted
    driver = kuberlhf_run(assets, workdir, workdir / name, {"KUBERLHF_TEST_SLOW_REWARD": "0.5", **(env or {})},
                          extra)
    wait_for_steps(driver, workdir / name, 4)
    return driver, workdir / name, straight


def kill_with_its_family(driver: subprocess.Popen) -> None:
    """SIGKILL: no handler, no cleanup, as an OOM kill or a lost node does it. Ray's agents outlive a killed
    driver; they are not ours to keep."""
    family = psutil.Process(driver.pid).children(recursive=True)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    for orphan in family:
        try:
            orphan.kill()
        except psutil.NoSuchProcess:
            pass


def test_a_driver_killed_then_terminated_resumes_each_time_with_the_same_batches_and_weights(assets, uninterrupted):
    """SIGKILL mid-run: the same command resumes from the newest checkpoint. SIGTERM on that resumed run (KubeRay
    deleting or suspending the job, a preempted node): a checkpoint at the step boundary, then exit 143; a rerun
    with changed settings is refused; the same command resumes again. Every step is logged once and the run ends
    as the uninterrupted one."""
    driver, output, straight = slow_run_past_step_4(assets, uninterrupted, "interrupted")
    kill_with_its_family(driver)
    killed_at = steps_logged(output)
    assert 4 <= len(killed_at) < 6, killed_at  # past the step-3 checkpoint, before step 6's
    assert sorted(p.name for p in (output / "checkpoints").iterdir() if not p.name.startswith(".")) == \
        ["step-00000003"]

    workdir = output.parent
    driver = kuberlhf_run(assets, workdir, output, {"KUBERLHF_TEST_SLOW_REWARD": "0.5"})
    wait_for_steps(driver, output, 6)  # the killed run never logged step 6: this run is past it
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 143, stderr[-3000:]
    assert "resuming from" in stderr and "step-00000003 (step 3)" in stderr
    (stopped,) = re.findall(r"SIGTERM: stopped after step (\d+); its checkpoint .*step-0000000\1 is saved", stderr)
    assert 6 <= int(stopped) < 8 and not (output / "final").exists()

    changed = kuberlhf_run(assets, workdir, output, extra=("spec.training.learningRate=0.5",))
    _, stderr = changed.communicate(timeout=300)
    assert changed.returncode == 1 and "was written by a job with other settings (training.learningRate: " in stderr
    assert "--resume-changed training.learningRate" in stderr and len(stderr.strip().splitlines()) == 1

    stderr = finish(kuberlhf_run(assets, workdir, output))
    assert f"step-0000000{stopped} (step {stopped})" in stderr
    assert_same_run(output, straight)


def test_a_worker_killed_then_one_hung_are_each_replaced_from_the_newest_checkpoint(assets, uninterrupted, tmp_path):
    """The policy's process SIGKILLed after step 4: the job restarts from step 3's checkpoint. Then, after step 6,
    the rollout worker hangs in the reward function: its generate call times out (callTimeoutSeconds), and the
    job restarts again from step 6's checkpoint. The run still equals the uninterrupted one."""
    hang = tmp_path / "hang-once"
    driver, output, straight = slow_run_past_step_4(assets, uninterrupted, "worker-killed",
                                                    {"KUBERLHF_TEST_HANG_ONCE": str(hang)},
                                                    ("spec.training.callTimeoutSeconds=30",))
    (policy,) = [p for p in psutil.Process(driver.pid).children(recursive=True)
                 if "PolicyWorker" in " ".join(p.cmdline())]
    policy.kill()  # SIGKILL the policy's process mid-run
    wait_for_steps(driver, output, 6)
    hang.touch()  # the next reward call hangs
    stderr = finish(driver)
    assert not hang.exists()  # a reward call did hang
    assert "a worker died" in stderr and "restart 1/2: new workers from" in stderr and "step-00000003" in stderr
    assert "workers replaced (rollout rank 0 generate: no answer within 30 s" in stderr, stderr[-3000:]
    assert "restart 2/2: new workers from" in stderr and "step-00000006" in stderr
    assert json.loads((output / "summary.json").read_text())["restarts"] == 2
    assert_same_run(output, straight)


# Slows every optimizer step of every process of the run that sets the variable (Ray's workers inherit the
# driver's environment), so the kill surely lands between two checkpoints of a fast offline stage.
SLOW_STEP_SITECUSTOMIZE = """import os
if os.environ.get("KUBERLHF_TEST_SLOW_STEP"):
    import time
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    register_optimizer_step_pre_hook(lambda *_: time.sleep(float(os.environ["KUBERLHF_TEST_SLOW_STEP"])))
"""


def sft_run(assets, workdir: Path, output: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kuberlhf.cli", "run", str(EXAMPLES / "dpo-tiny.yaml"), "--no-dashboard",
         "--set", "spec.algorithm=sft", "--set", "spec.dpo=", "--set", f"spec.policy.model={assets['model']}",
         "--set", f"spec.data.train={assets['sft']}", "--set", f"spec.output.dir={output}",
         "--set", "spec.metrics.port=0", "--set", "spec.training.steps=10", "--set", "spec.training.batchSize=8",
         "--set", "spec.checkpoint.everySteps=3", "--set", "spec.checkpoint.keep=1"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})},
    )


def test_a_ray_train_worker_killed_then_the_driver_terminated_mid_stage_resumes_from_the_newest_checkpoint(
        assets, tmp_path):
    """A Ray Train worker killed mid-stage: the driver restarts the stage from its newest checkpoint. SIGTERM
    on the driver after that: the workers checkpoint and stop; running the job again finishes it. The same
    batches as an uninterrupted run, the same final weights."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_STEP_SITECUSTOMIZE)
    straight, output = tmp_path / "straight", tmp_path / "interrupted"
    finish(sft_run(assets, tmp_path, straight))
    driver = sft_run(assets, tmp_path, output, {"KUBERLHF_TEST_SLOW_STEP": "0.5"})
    wait_for_steps(driver, output, 4)
    (worker,) = [p for p in psutil.Process(driver.pid).children(recursive=True)
                 if "RayTrainWorker" in " ".join(p.cmdline())]
    worker.kill()
    # killed before step 6 (checkpoints every 3): the restarted stage logs it. Rank 0 learns of a SIGTERM from
    # the driver within two steps, hence 10 steps
    wait_for_steps(driver, output, 6)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 143, stderr[-3000:]
    assert "a Ray Train worker failed" in stderr and "restart 1/2" in stderr
    assert "resuming from" in stderr and "step-00000003 (step 3)" in stderr
    (stopped,) = re.findall(r"SIGTERM: stopped after step (\d+); its checkpoint .*/step-0000000\1 is saved", stderr)
    assert 6 <= int(stopped) < 10 and not (output / "final").exists()

    stderr = finish(sft_run(assets, tmp_path, output))
    assert f"step-0000000{stopped} (step {stopped})" in stderr
    assert steps_logged(output) == list(range(1, 11))
    losses = {r["step"]: r["loss"] for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())}
    expected = {r["step"]: r["loss"] for r in map(json.loads, (straight / "metrics.jsonl").read_text().splitlines())}
    for step in range(4, 11):  # the same batches after the restart and after the resume
        assert losses[step] == pytest.approx(expected[step], abs=1e-5), step
    assert_same_final_weights(output, straight)

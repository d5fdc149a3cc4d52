"""What keeps two runs from mixing: the fingerprint a checkpoint records (a rerun with changed settings or
inputs is refused with the differences, or accepts the named ones), the lease that keeps a second writer out,
and the step log that survives a cut last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import torch

from kuberlhf.errors import UserError
from kuberlhf.jobfile import load_job
from kuberlhf.storage import lease as lease_module
from kuberlhf.storage.fingerprint import check_resume, fingerprint
from kuberlhf.storage.lease import LEASE_KEY, Lease, leased
from kuberlhf.storage.store import Storage
from kuberlhf.telemetry.run_log import StepLog

EXAMPLE = "examples/grpo-tiny.yaml"


def job(*overrides: str):
    return load_job(EXAMPLE, list(overrides))


def test_a_changed_setting_is_refused_with_the_difference_and_accepted_when_named():
    recorded = fingerprint(job().spec)
    assert fingerprint(job("spec.training.steps=999", "spec.logging.samplesPerStep=2").spec) == recorded
    # how weights travel and how long a call may take do not change what is trained
    assert fingerprint(job("spec.rollout.weightSync.transport=objectStore", "spec.training.callTimeoutSeconds=60").spec) \
        == recorded
    changed = fingerprint(job("spec.training.learningRate=0.5", "spec.algorithm=rloo").spec)
    with pytest.raises(UserError, match=r"^spec.checkpoint: ckpt/step-3 was written by a job with other settings "
                                        r"\(algorithm: grpo -> rloo; training.learningRate: .* -> 0.5\); resuming "
                                        r"would mix two runs\. .* --resume-changed algorithm,training.learningRate$"):
        check_resume(recorded, changed, [], "ckpt/step-3")
    with pytest.raises(UserError, match=r"\(algorithm: grpo -> rloo\)"):
        check_resume(recorded, changed, ["training.learningRate"], "ckpt/step-3")
    accepted = check_resume(recorded, changed, ["training", "algorithm"], "ckpt/step-3")
    assert accepted["training.learningRate"][1] == 0.5
    with pytest.raises(UserError, match=r"records no fingerprint"):
        check_resume(None, changed, [], "ckpt/step-3")


def test_the_data_and_model_files_are_part_of_the_fingerprint(tmp_path, monkeypatch):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "2+2=", "answer": "4"}\n')
    recorded = fingerprint(job(f"spec.data.train={data}").spec)
    os.utime(data, (0, 0))  # a copy on a new pod has another mtime: not a change
    assert check_resume(recorded, fingerprint(job(f"spec.data.train={data}").spec), [], "step-1") == {}
    data.write_text('{"prompt": "2+2=", "answer": "4"}\n{"prompt": "1+1=", "answer": "2"}\n')
    with pytest.raises(UserError, match=r"inputs.data.train: file \d+ bytes, sha256 \w+ -> file \d+ bytes.* "
                                        r"--resume-changed data.train$"):
        check_resume(recorded, fingerprint(job(f"spec.data.train={data}").spec), [], "step-1")
    assert check_resume(recorded, fingerprint(job(f"spec.data.train={data}").spec), ["data.train"], "step-1")


def test_a_second_run_on_the_same_outputs_is_refused_naming_the_holder(tmp_path):
    root = Storage(tmp_path / "out", "spec.output.dir")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kuberlhf.storage.lease import Lease; from kuberlhf.storage.store import Storage;"
        f"Lease(Storage({str(tmp_path / 'out')!r}, 'spec.output.dir')).acquire(); print('held', flush=True);"
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"^spec.output.dir: .*out is in use by another run \(pid {holder.pid} "
                                            r"on .*, alive \d+ s ago\); wait for it"):
            Lease(root).acquire()
    finally:
        holder.kill()
        holder.wait()
    with leased([root]):  # its process is gone: the kernel dropped the lock, the lease names a dead pid
        assert json.loads((tmp_path / "out" / LEASE_KEY).read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out" / LEASE_KEY).exists()


def test_an_object_store_lease_is_refused_while_fresh_and_taken_over_when_stale(monkeypatch):
    store = Storage(f"memory://kuberlhf-test-{uuid.uuid4().hex}/out", "spec.output.uri")
    other = {"host": "ray-head-abc", "pid": 7, "owner": "uid-1", "since": 0.0, "heartbeat": __import__("time").time()}
    store.write_json(LEASE_KEY, other)
    with pytest.raises(UserError, match=r"in use by another run \(pid 7 on ray-head-abc, RLHFJob uid uid-1"):
        Lease(store).acquire()
    monkeypatch.setenv(lease_module.OWNER_ENV, "uid-1")  # a KubeRay retry of the same RLHFJob takes over
    with leased([store]):
        assert store.read_json(LEASE_KEY)["pid"] == os.getpid()
    monkeypatch.delenv(lease_module.OWNER_ENV)
    store.write_json(LEASE_KEY, {**other, "heartbeat": 0.0})  # its holder stopped renewing long ago
    with leased([store]):
        assert store.read_json(LEASE_KEY)["pid"] == os.getpid()


def test_a_metrics_line_cut_short_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    log = StepLog(path, resume_step=2)
    log.write({"step": 3, "loss": 0.25})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_new_learning_rate_takes_effect_after_the_optimizer_state_is_restored():
    from kuberlhf.engines.training import TorchTrainingEngine, TrainingSetup

    model = torch.nn.Linear(2, 1)
    engine = TorchTrainingEngine(model, TrainingSetup(1e-3, 0.0, 1.0, lr_schedule="linear", total_steps=10))
    for _ in range(5):
        engine.accumulate(model(torch.ones(1, 2)).sum())
        engine.step()
    state = engine.state_dict()
    resumed = TorchTrainingEngine(model, TrainingSetup(1e-3, 0.0, 1.0, lr_schedule="linear", total_steps=10))
    resumed.load_state_dict(state)
    assert resumed.learning_rate == pytest.approx(1e-3 * 5 / 10)  # the checkpoint's
    resumed.set_learning_rate(4e-3)
    assert resumed.learning_rate == pytest.approx(4e-3 * 5 / 10)  # the new base, same place in the schedule
    resumed.accumulate(model(torch.ones(1, 2)).sum())
    resumed.step()
    assert resumed.learning_rate == pytest.approx(4e-3 * 4 / 10)

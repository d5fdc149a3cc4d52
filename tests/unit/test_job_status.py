"""A job on Kubernetes reports its progress into its RLHFJob's status: the values, the rate limit, and that a
failing API never stops training."""

from __future__ import annotations

from openapi_schema_validator import OAS30Validator

from kuberlhf.crd import crd_document
import pytest

from kuberlhf.telemetry.job_status import StatusReporter, human_duration, progress_status, status_reporter

NOW = "2026-11-24T12:00:00Z"


def test_progress_by_hand():
    progress = progress_status(step=12, total_steps=40, first_step=3, seconds=50.0,
                               metrics={"reward/mean": 0.51234567, "kl/sequence": 0.02}, stage="ppo", now=NOW)
    # 10 steps run here in 50 s: 5 s a step, 28 to go
    assert progress == {"step": 12, "totalSteps": 40, "steps": "12/40", "percent": 30.0, "etaSeconds": 140.0,
                        "eta": "2m20s", "updatedAt": NOW, "reward": 0.512346, "kl": 0.02, "stage": "ppo"}
    status = crd_document()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    OAS30Validator(status).validate({"progress": progress})  # what the CRD declares


@pytest.mark.parametrize("seconds, shown", [(0, "0s"), (35.4, "35s"), (59.6, "1m00s"), (250, "4m10s"),
                                             (3900, "1h05m"), (183600, "2d03h")])
def test_the_eta_column_reads_like_kubectl_ages(seconds, shown):
    assert human_duration(seconds) == shown


def test_the_printer_columns_name_the_algorithm_and_the_eta():
    columns = {c["name"]: c["jsonPath"] for c in crd_document()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Algorithm"] == ".spec.algorithm" and columns["ETA"] == ".status.progress.eta"


def test_reports_are_rate_limited_but_the_last_step_always_goes_out():
    sent = []
    reporter = StatusReporter("team-a", "job", total_steps=5, first_step=1, stage=None,
                              patch=lambda ns, name, body: sent.append((ns, name, body)), interval=3600)
    for step in range(1, 6):
        reporter.report(step, {"loss": 1.0 / step})
    assert [body["status"]["progress"]["step"] for _, _, body in sent] == [1, 5]
    assert sent[-1][:2] == ("team-a", "job") and sent[-1][2]["status"]["progress"]["loss"] == 0.2


def test_a_failing_api_is_logged_once_and_never_raises(caplog):
    def broken(namespace, name, body):
        raise ConnectionError("forbidden")

    reporter = StatusReporter("ns", "job", total_steps=3, first_step=1, stage=None, patch=broken, interval=0)
    for step in (1, 2, 3):
        reporter.report(step, {})
    assert reporter.failed
    assert sum("cannot write progress" in r.message for r in caplog.records) == 1


def test_no_reporter_outside_kubernetes(monkeypatch):
    monkeypatch.delenv("KUBERLHF_RLHFJOB", raising=False)
    assert status_reporter(10, 1, {}) is None


def test_each_stage_of_a_chain_reports_under_its_name():
    from pathlib import Path

    from kuberlhf.jobfile import load_job
    from kuberlhf.stages import stage_jobs

    chain = load_job(Path(__file__).resolve().parents[2] / "examples" / "chain-tiny.yaml")
    assert [job.metadata.labels["kuberlhf.io/stage"] for job in stage_jobs(chain)] == ["sft", "rm", "ppo"]


def test_monitor_signals_go_out_at_once_and_fit_the_crd():
    from kuberlhf.telemetry.monitor import Signal

    sent = []
    reporter = StatusReporter("ns", "job", total_steps=50, first_step=1, stage=None,
                              patch=lambda ns, name, body: sent.append(body["status"]), interval=3600)
    reporter.report(1, {}, signals=[])
    reporter.report(2, {}, signals=[], force=False)  # rate-limited
    reporter.report(3, {}, signals=[Signal("length", 3, "r=0.9, 3.0 -> 6.0 tokens")], force=True)
    assert [s["progress"]["step"] for s in sent] == [1, 3]
    assert sent[-1]["monitor"] == {"signals": [{"signal": "length", "step": 3, "evidence": "r=0.9, 3.0 -> 6.0 tokens"}],
                                   "step": 3}
    status = crd_document()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    OAS30Validator(status).validate(sent[-1])

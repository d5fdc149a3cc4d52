"""spec.logging.reportTo: the metrics a run writes to metrics.jsonl reach TensorBoard's event files, readable by
TensorBoard's own reader; a resumed run's events replace those after its checkpoint; output.uri gets them."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kuberlhf.jobfile import load_job
from kuberlhf.storage import job_storage
from kuberlhf.telemetry.run_log import StepLog

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_numeric_metric_becomes_a_tensorboard_scalar_at_its_step(tmp_path):
    log = StepLog(tmp_path / "metrics.jsonl", report_to=["tensorboard"])
    for step in (1, 2, 3):
        log.write({"step": step, "reward/mean": 0.1 * step, "kl/sequence": 0.01, "note": "text is left out",
                   "flag": True, "broken": float("nan")})
    found = scalars(tmp_path / "tensorboard")
    assert found == {"reward/mean": [(1, 0.1), (2, 0.2), (3, 0.3)], "kl/sequence": [(1, 0.01), (2, 0.01), (3, 0.01)]}
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # the file is written as before


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    first = StepLog(tmp_path / "metrics.jsonl", report_to=["tensorboard"])
    for step in (1, 2, 3, 4):
        first.write({"step": step, "reward/mean": float(step)})
    resumed = StepLog(tmp_path / "metrics.jsonl", resume_step=2, report_to=["tensorboard"])
    for step in (3, 4):
        resumed.write({"step": step, "reward/mean": 10.0 * step})
    assert scalars(tmp_path / "tensorboard")["reward/mean"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_no_tracker_no_directory(tmp_path):
    StepLog(tmp_path / "metrics.jsonl").write({"step": 1, "reward/mean": 1.0})
    assert not (tmp_path / "tensorboard").exists()


def test_the_event_files_go_to_output_uri_with_the_other_logs(tmp_path):
    job = load_job(EXAMPLES / "grpo-tiny.yaml", [f"spec.output.dir={tmp_path / 'local'}",
                                                  f"spec.output.uri=file://{tmp_path / 'bucket'}",
                                                  "spec.logging.reportTo=[tensorboard]"])
    storage = job_storage(job)
    StepLog(storage.local / "metrics.jsonl", report_to=job.spec.logging.report_to).write({"step": 1, "loss": 0.5})
    storage.copy_logs()
    assert scalars(tmp_path / "bucket" / "tensorboard") == {"loss": [(1, 0.5)]}
    assert (tmp_path / "bucket" / "metrics.jsonl").is_file()

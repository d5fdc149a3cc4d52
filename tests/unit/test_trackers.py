"""spec.logging.reportTo: the metrics a run writes to metrics.jsonl (and its samples) reach each tracker, read
back with the tracker's own reader: TensorBoard's event files, W&B's offline run file (`wandb sync` uploads that
file as it is), MLflow's client on its store. A resumed run continues the same run; output.uri gets the files,
and a new machine continues the MLflow run from there; a tracker that is not installed is a one-line error."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kuberlhf.cli import main
from kuberlhf.errors import UserError
from kuberlhf.jobfile import load_job
from kuberlhf.storage import job_storage
from kuberlhf.telemetry.mlflow_tracker import flat_params, mlflow_key
from kuberlhf.telemetry.run_log import StepLog
from kuberlhf.telemetry.tracking import Tracking, tracking_of, without_environment
from kuberlhf.telemetry.wandb_tracker import wandb_mode

from ..tracker_files import offline_runs, tracker_environment

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RECORDS = [{"step": step, "reward/mean": 0.1 * step, "kl/sequence": 0.01, "note": "text is left out", "flag": True,
            "broken": float("nan")} for step in (1, 2, 3)]
SAMPLES = [{"step": 2, "prompt": [{"role": "user", "content": "1+2="}], "completion": "3 | three\nok", "reward": 1.0,
            "answer": "3"}]


@pytest.fixture
def trackers_offline(tmp_path, monkeypatch):
    tracker_environment(monkeypatch, tmp_path / "home")


def tensorboard(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory))
    events.Reload()
    return events


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    events = tensorboard(directory)
    return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def write_run(path: Path, tracking: Tracking, records: list[dict], resume_step: int = 0, fail: bool = False) -> None:
    """Records (and SAMPLES at their step) through a StepLog, closed as a finished run, or a failed one."""
    try:
        with StepLog(path, resume_step, tracking=tracking) as log:
            for record in records:
                if record["step"] == SAMPLES[0]["step"]:
                    log.track_samples(record["step"], SAMPLES)
                log.write(record)
            if fail:
                raise RuntimeError("the job failed")
    except RuntimeError:
        assert fail


def mlflow_run(output: Path):
    """The MLflow client on the local store in `output`, and the run the tracker keeps there."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    return client, client.get_run((output / "mlflow" / "kuberlhf-run-id").read_text().strip())


def test_every_numeric_metric_becomes_a_tensorboard_scalar_at_its_step(tmp_path):
    write_run(tmp_path / "metrics.jsonl", Tracking(("tensorboard",)), RECORDS)
    found = scalars(tmp_path / "tensorboard")
    assert found == {"reward/mean": [(1, 0.1), (2, 0.2), (3, 0.3)], "kl/sequence": [(1, 0.01), (2, 0.01), (3, 0.01)]}
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # the file is written as before
    (text,) = tensorboard(tmp_path / "tensorboard").Tensors("samples/text_summary")  # the TEXT tab's table
    table = text.tensor_proto.string_val[0].decode()
    assert text.step == 2 and table.splitlines()[0] == "| prompt | completion | reward | answer |"
    assert '"content": "1+2="' in table and "| 3 \\| three<br>ok | 1 | 3 |" in table


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    write_run(tmp_path / "metrics.jsonl", Tracking(("tensorboard",)),
              [{"step": step, "reward/mean": float(step)} for step in (1, 2, 3, 4)])
    write_run(tmp_path / "metrics.jsonl", Tracking(("tensorboard",)),
              [{"step": step, "reward/mean": 10.0 * step} for step in (3, 4)], resume_step=2)
    assert scalars(tmp_path / "tensorboard")["reward/mean"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_no_tracker_no_directory(tmp_path):
    StepLog(tmp_path / "metrics.jsonl").write({"step": 1, "reward/mean": 1.0})
    StepLog(tmp_path / "samples.jsonl", tracking=Tracking()).write({"step": 1, "completion": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "samples.jsonl"]


def test_the_wandb_run_is_offline_beside_metrics_jsonl_with_each_metric_at_its_step(tmp_path, trackers_offline,
                                                                                     monkeypatch):
    monkeypatch.delenv("WANDB_MODE")  # neither WANDB_MODE nor WANDB_API_KEY: offline all the same
    write_run(tmp_path / "metrics.jsonl", Tracking(("wandb",), "grpo-tiny", {"training": {"steps": 3}}), RECORDS)
    (run,) = offline_runs(tmp_path / "wandb")
    assert run.run_id == (tmp_path / "wandb" / "kuberlhf-run-id").read_text().strip()
    assert (run.name, run.project, run.config["training"], run.exit_code) == ("grpo-tiny", "kuberlhf", {"steps": 3}, 0)
    assert {step: {k: v for k, v in row.items() if k != "samples"} for step, row in run.history.items()} == {
        1: {"reward/mean": 0.1, "kl/sequence": 0.01}, 2: {"reward/mean": 0.2, "kl/sequence": 0.01},
        3: {"reward/mean": pytest.approx(0.3), "kl/sequence": 0.01}}
    table = run.history[2]["samples"]  # a wandb.Table, in the run's files
    assert table["_type"] == "table-file" and table["nrows"] == 1
    rows = (run.directory / "files" / table["path"]).read_text()
    assert '"3 | three\\nok"' in rows and '1+2=' in rows


def test_wandb_mode_honours_wandb_mode_else_goes_online_only_with_an_api_key(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"  # as set, API key or not


def test_a_resumed_wandb_run_keeps_its_run_id_and_a_failed_one_says_so(tmp_path, trackers_offline):
    tracking = Tracking(("wandb",), "grpo-tiny")
    write_run(tmp_path / "metrics.jsonl", tracking, RECORDS, fail=True)
    write_run(tmp_path / "metrics.jsonl", tracking, [{"step": 3, "reward/mean": 3.0}, {"step": 4, "reward/mean": 4.0}],
              resume_step=2)
    first, resumed = offline_runs(tmp_path / "wandb")  # offline: one directory per attempt, `wandb sync` joins them
    assert first.run_id == resumed.run_id and (first.exit_code, resumed.exit_code) == (1, 0)
    assert sorted(first.history) == [1, 2, 3] and resumed.history == {3: {"reward/mean": 3.0}, 4: {"reward/mean": 4.0}}
    shutil.rmtree(tmp_path / "wandb")  # another output directory: another run
    write_run(tmp_path / "metrics.jsonl", tracking, RECORDS)
    (other,) = offline_runs(tmp_path / "wandb")
    assert other.run_id != first.run_id


def test_the_mlflow_run_holds_the_metrics_at_their_steps_the_spec_as_params_and_the_samples(tmp_path,
                                                                                            trackers_offline):
    job = load_job(EXAMPLES / "grpo-tiny.yaml", [f"spec.output.dir={tmp_path}", "spec.logging.reportTo=[mlflow]",
                                                  "spec.cluster.env.TOKEN_URL=https://user:secret@example.com"])
    write_run(tmp_path / "metrics.jsonl", tracking_of(job), RECORDS + [{"step": 3, "reward_fn/a:b (c)": 2.0}])
    client, run = mlflow_run(tmp_path)
    assert (run.info.run_name, run.info.status) == ("grpo-tiny", "FINISHED")
    assert client.get_experiment(run.info.experiment_id).name == "kuberlhf"
    history = {key: [(m.step, round(m.value, 6)) for m in client.get_metric_history(run.info.run_id, key)]
               for key in run.data.metrics}
    assert history == {"reward/mean": [(1, 0.1), (2, 0.2), (3, 0.3)], "kl/sequence": [(1, 0.01), (2, 0.01), (3, 0.01)],
                       "reward_fn/a_b _c_": [(3, 2.0)]}  # MLflow refuses `:`, `(` in a name
    params = run.data.params
    assert params["training.learningRate"] == "0.0001" and params["algorithm"] == "grpo"
    assert params["logging.reportTo"] == '["mlflow"]' and not any(key.startswith("cluster") for key in params)
    (artifact,) = client.list_artifacts(run.info.run_id, "samples")
    assert artifact.path == "samples/step_000002.json"
    written = Path(client.download_artifacts(run.info.run_id, artifact.path)).read_text()
    assert '"completion": "3 | three\\nok"' in written
    assert (tmp_path / "mlflow" / "artifacts").is_dir()  # the local store keeps its artifacts in the output too


def test_a_resumed_mlflow_run_is_the_same_run_running_again(tmp_path, trackers_offline, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "addition")
    tracking = Tracking(("mlflow",), "grpo-tiny", {"training": {"steps": 4}})
    write_run(tmp_path / "metrics.jsonl", tracking, RECORDS, fail=True)
    client, failed = mlflow_run(tmp_path)
    assert failed.info.status == "FAILED" and client.get_experiment(failed.info.experiment_id).name == "addition"
    changed = Tracking(("mlflow",), "grpo-tiny", {"training": {"steps": 5}})  # resumeChanged: params stay as logged
    write_run(tmp_path / "metrics.jsonl", changed, [{"step": 3, "reward/mean": 3.0}, {"step": 4, "reward/mean": 4.0}],
              resume_step=2)
    client, resumed = mlflow_run(tmp_path)
    assert resumed.info.run_id == failed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params == {"training.steps": "4"}
    steps = [(m.step, round(m.value, 6)) for m in client.get_metric_history(resumed.info.run_id, "reward/mean")]
    # MLflow keeps every value: step 3 twice, the resumed run's value logged last
    assert sorted(steps) == [(1, 0.1), (2, 0.2), (3, 0.3), (3, 3.0), (4, 4.0)]
    assert resumed.data.metrics["reward/mean"] == 4.0


def test_no_environment_variable_reaches_a_trackers_config():
    config = {"runtimeEnv": {"envVars": {"WANDB_API_KEY": "k"}, "pip": ["x==1"]}, "cluster": {"env": {"A": "b"}}}
    assert without_environment(config) == {"runtimeEnv": {"pip": ["x==1"]}, "cluster": {}}


def test_mlflow_names_and_params_within_its_limits():
    assert mlflow_key("reward/mean") == "reward/mean"
    assert mlflow_key("/a//b/../c:d") == "a/b/c_d" and mlflow_key("..") == "_" and len(mlflow_key("x" * 300)) == 250
    params = flat_params({"training": {"kl": {"coef": 0.01}}, "data": {"eval": None},
                          "reward": {"function": "m" * 7000}, "stages": [{"name": "sft"}], "cluster": {}})
    assert params == {"training.kl.coef": "0.01", "reward.function": "m" * 6000, "stages": '[{"name": "sft"}]',
                      "cluster": "{}"}


def test_the_trackers_files_go_to_output_uri_and_a_new_machine_continues_the_runs(tmp_path, trackers_offline):
    def job_in(local: Path):
        return load_job(EXAMPLES / "grpo-tiny.yaml", [f"spec.output.dir={local}",
                                                       f"spec.output.uri=file://{tmp_path / 'bucket'}",
                                                       "spec.logging.reportTo=[tensorboard,wandb,mlflow]"])

    job = job_in(tmp_path / "local")
    storage = job_storage(job)
    write_run(storage.local / "metrics.jsonl", tracking_of(job), [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}])
    storage.copy_logs()
    bucket = tmp_path / "bucket"
    assert scalars(bucket / "tensorboard") == {"loss": [(1, 0.5), (2, 0.25)]}
    (synced,) = offline_runs(bucket / "wandb")
    assert {step: row["loss"] for step, row in synced.history.items()} == {1: 0.5, 2: 0.25}
    assert (bucket / "metrics.jsonl").is_file() and (bucket / "mlflow" / "mlflow.db").is_file()
    _, before = mlflow_run(storage.local)

    job = job_in(tmp_path / "new-pod")  # its output directory is empty; output.uri has the logs
    storage = job_storage(job)
    storage.fetch_logs()
    write_run(storage.local / "metrics.jsonl", tracking_of(job), [{"step": 3, "loss": 0.1}], resume_step=2)
    client, after = mlflow_run(storage.local)
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(after.info.run_id, "loss")] == [
        (1, 0.5), (2, 0.25), (3, 0.1)]
    (resumed,) = offline_runs(storage.local / "wandb")
    assert resumed.run_id == synced.run_id and list(resumed.history) == [3]


@pytest.mark.parametrize("tracker, module", [("wandb", "wandb"), ("mlflow", "mlflow"), ("mlflow", "sqlalchemy")])
def test_a_tracker_that_is_not_installed_is_a_one_line_error_at_start_and_in_validate(tmp_path, monkeypatch, capsys,
                                                                                       tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # how Python marks a module as not importable
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    message = f"spec.logging.reportTo: {tracker} is not installed here (pip install 'kuberlhf[{tracker}]')"
    with pytest.raises(UserError) as raised:
        StepLog(tmp_path / "metrics.jsonl", tracking=Tracking((tracker,)))
    assert str(raised.value) == message
    assert main(["validate", str(EXAMPLES / "dpo-tiny.yaml"), "--set", f"spec.logging.reportTo=[{tracker}]"]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    if module == "sqlalchemy":  # only the local store needs it: a tracking server does not
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
        from kuberlhf.telemetry.trackers import check_installed

        check_installed(["mlflow"])

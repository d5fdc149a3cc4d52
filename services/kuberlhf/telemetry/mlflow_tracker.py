"""MLflow (`spec.logging.reportTo: [mlflow]`, the `mlflow` extra): one MLflow run per job (per stage of a
chained job) in the experiment `MLFLOW_EXPERIMENT_NAME` (default `kuberlhf`), the flattened spec as its
params, each record's metrics at the record's step, and every samples.jsonl batch as a JSON artifact.

The store is `MLFLOW_TRACKING_URI` where set (a tracking server), else a SQLite database in
`<output.dir>/mlflow`: it needs no server or network, and MLflow 3 keeps its file store (`./mlruns`) in
maintenance mode and refuses it unless `MLFLOW_ALLOW_FILE_STORE` is set.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError, first_line
from kuberlhf.telemetry.tracking import Tracking, numeric_metrics

RUN_ID_FILE = "kuberlhf-run-id"  # in <output.dir>/mlflow: the MLflow run a resumed job continues
KEY_LIMIT = 250  # MLflow's longest metric or param name (MAX_ENTITY_KEY_LENGTH)
PARAM_VALUE_LIMIT = 6000  # MLflow's longest param value (MAX_PARAM_VAL_LENGTH); a longer value is cut
PARAMS_PER_BATCH = 100  # MLflow takes at most this many params in one log_batch (MAX_PARAMS_TAGS_PER_BATCH)


class MlflowTracker:
    """An MLflow run that a resumed job continues: its id is kept in the output directory, and the run is set
    back to RUNNING. MLflow keeps every value logged, so the steps a resumed run logs again after its
    checkpoint hold two values each, the later one the resumed run's (metrics.jsonl keeps only that one)."""

    def __init__(self, directory: Path, tracking: Tracking) -> None:
        from mlflow.tracking import MlflowClient

        directory.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri(directory)
        try:
            self.client = MlflowClient(self.uri)
            self.run_id = self._continue_run(directory / RUN_ID_FILE) or self._new_run(directory, tracking)
        except UserError:
            raise
        except Exception as err:  # a server that does not answer, a URI MLflow cannot use, no permission
            raise UserError(f"spec.logging.reportTo: mlflow could not start its run in {self.uri} "
                            f"({first_line(err)})") from None
        (directory / RUN_ID_FILE).write_text(self.run_id + "\n")

    def _continue_run(self, id_file: Path) -> str | None:
        """The run of an earlier attempt, where this store still holds it (not deleted), set running again."""
        from mlflow.exceptions import MlflowException

        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:  # another store (MLFLOW_TRACKING_URI changed) or a run deleted for good
            return None
        if run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _new_run(self, directory: Path, tracking: Tracking) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self._experiment(directory), run_name=tracking.run_name)
        params = [Param(key, value) for key, value in flat_params(tracking.config).items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=params[start : start + PARAMS_PER_BATCH])
        return run.info.run_id

    def _experiment(self, directory: Path) -> str:
        """The experiment's id, made if missing; a local store keeps its artifacts beside its database (MLflow's
        default, `./mlruns`, is wherever the job was started from)."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "kuberlhf"
        found = self.client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage != "active":
            raise UserError(f"spec.logging.reportTo: the MLflow experiment {name!r} in {self.uri} is deleted; "
                            f"restore it or set MLFLOW_EXPERIMENT_NAME to another")
        if found is not None:
            return found.experiment_id
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        return self.client.create_experiment(name, artifact_location=(directory / "artifacts").resolve().as_uri()
                                             if local else None)

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, timestamp = int(record["step"]), int(time.time() * 1000)
        metrics = [Metric(mlflow_key(key), value, timestamp, step) for key, value in numeric_metrics(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """One JSON file per step (`samples/step_000010.json`): a resumed run writes the same name again."""
        text = json.dumps(samples, ensure_ascii=False, indent=1, default=str)
        self.client.log_text(self.run_id, text, f"samples/step_{step:06d}.json")

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def tracking_uri(directory: Path) -> str:
    """`MLFLOW_TRACKING_URI` where set, else the SQLite store `<directory>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(directory / 'mlflow.db').resolve()}"


def mlflow_key(key: str) -> str:
    """A name MLflow takes: letters, digits, `_ - . /` and spaces, no empty, `.` or `..` part between slashes,
    at most 250 characters. Our own keys are such names already; what a reward function logs with `log_metric`
    may not be, and its other characters become `_` (a colon too: MLflow refuses it on Windows servers)."""
    cleaned = re.sub(r"[^\w.\- /]", "_", key)
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    return ("/".join(parts) or "_")[:KEY_LIMIT]


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The spec as MLflow params: nested sections as dotted names (`training.learningRate`), lists as JSON, unset
    fields left out, values cut to MLflow's limit."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{name}."))
        elif value is not None:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            params[mlflow_key(name)] = text[:PARAM_VALUE_LIMIT]
    return params

"""kopf wiring: every event about an RLHFJob, or about a RayJob it owns, reads the job and its children from
the API, calls the pure `reconcile`, and applies what it returns. No decision is made here.

Run: `kopf run --all-namespaces -m kuberlhf_operator.handlers` (the chart's Deployment does). Settings come
from the environment: KUBERLHF_RUNTIME_IMAGE (default runtime image), KUBERLHF_JOB_SERVICE_ACCOUNT (the pods'
account), KUBERLHF_METRICS_PORT (default 8080; 0 = off).
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from kuberlhf.crd import GROUP, PLURAL, VERSION
from kuberlhf_operator.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES, PhaseBook
from kuberlhf_operator.rayjob import JOB_LABEL, OperatorSettings, configmap_name, namespace_of
from kuberlhf_operator.reconcile import reconcile, status_patch

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayjobs"
PHASES = PhaseBook()


def operator_settings() -> OperatorSettings:
    return OperatorSettings(runtime_image=os.environ.get("KUBERLHF_RUNTIME_IMAGE", "ghcr.io/kuberlhf/runtime:latest"),
                            job_service_account=os.environ.get("KUBERLHF_JOB_SERVICE_ACCOUNT") or None)


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    settings.posting.level = logging.WARNING  # Kubernetes events for warnings and errors only
    settings.persistence.finalizer = f"{GROUP}/operator"
    port = int(os.environ.get("KUBERLHF_METRICS_PORT", "8080"))
    if port:
        from prometheus_client import start_http_server

        start_http_server(port)
        logger.info(f"metrics on :{port}/metrics")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def job_changed(body: kopf.Body, **_: Any) -> None:
    reconcile_job(dict(body), trigger="job")


@kopf.on.field(RAY_GROUP, RAY_VERSION, RAY_PLURAL, field="status", labels={JOB_LABEL: kopf.PRESENT})
def rayjob_status_changed(body: kopf.Body, namespace: str, **_: Any) -> None:
    owner = body["metadata"]["labels"][JOB_LABEL]
    try:
        job = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, owner)
    except ApiException as err:
        if err.status == 404:
            return  # the job is gone; its children go with it
        raise
    reconcile_job(job, trigger="rayjob")


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def job_deleted(body: kopf.Body, **_: Any) -> None:
    PHASES.record(_key(dict(body)), None)


def reconcile_job(job: dict[str, Any], trigger: str) -> None:
    RECONCILES.labels(trigger=trigger).inc()
    started = time.perf_counter()
    try:
        actions = reconcile(job, read_rayjob(job), read_configmap(job), operator_settings(), _now())
        apply(job, actions)
    except Exception:
        RECONCILE_ERRORS.labels(trigger=trigger).inc()
        raise
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
    PHASES.record(_key(job), actions.status.get("phase"))


def apply(job: dict[str, Any], actions: Any) -> None:
    namespace, name = namespace_of(job), job["metadata"]["name"]
    core, custom = kubernetes.client.CoreV1Api(), kubernetes.client.CustomObjectsApi()
    for child in actions.create:
        try:
            if child["kind"] == "ConfigMap":
                core.create_namespaced_config_map(namespace, child)
            else:
                custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, child)
        except ApiException as err:
            if err.status != 409:  # 409: created by an earlier, interrupted reconcile: keep it
                raise
    if actions.patch_rayjob is not None:
        custom.patch_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name,
                                              actions.patch_rayjob)
    if actions.status != (job.get("status") or {}):
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                     {"status": status_patch(job.get("status"), actions.status)})


def read_rayjob(job: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace_of(job), RAY_PLURAL, job["metadata"]["name"])
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def read_configmap(job: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return kubernetes.client.CoreV1Api().read_namespaced_config_map(configmap_name(job), namespace_of(job)).to_dict()
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _key(job: dict[str, Any]) -> str:
    return f"{namespace_of(job)}/{job['metadata']['name']}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

"""kopf wiring: every event about an RLHFJob, or about a RayJob it owns, reads the job and its children from
the API, calls the pure `reconcile`, and applies what it returns. No decision is made here.

Run: `kopf run --all-namespaces -m kuberlhf_operator.handlers` (the chart's Deployment does). Settings come
from the environment (operator_settings): KUBERLHF_RUNTIME_IMAGE, KUBERLHF_RAY_AUTH (token | disabled),
KUBERLHF_NETWORK_POLICY, KUBERLHF_MONITORING_NAMESPACE_LABELS and KUBERLHF_KUBERAY_PEER (JSON),
KUBERLHF_ALLOWED_IMAGES and KUBERLHF_ALLOWED_SERVICE_ACCOUNTS (comma-separated), KUBERLHF_METRICS_PORT
(default 8080; 0 = off).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from kuberlhf.crd import GROUP, PLURAL, VERSION
from kuberlhf_operator.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES, PhaseBook
from kuberlhf_operator.kube_api import API, CHILD_NAMES, RAY_GROUP, RAY_PLURAL, RAY_VERSION
from kuberlhf_operator.rayjob import JOB_LABEL, OperatorSettings, namespace_of
from kuberlhf_operator.reconcile import child_error, reconcile, status_patch

PHASES = PhaseBook()


def operator_settings() -> OperatorSettings:
    """The chart's settings, from the Deployment's environment (helm/kuberlhf/templates/deployment.yaml)."""
    env = os.environ.get

    def names(variable: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in env(variable, "").split(",") if item.strip())

    monitoring = env("KUBERLHF_MONITORING_NAMESPACE_LABELS")
    settings: dict[str, Any] = {
        "runtime_image": env("KUBERLHF_RUNTIME_IMAGE", "ghcr.io/kuberlhf/runtime:latest"),
        "ray_auth": env("KUBERLHF_RAY_AUTH", "token") == "token",
        "network_policy": env("KUBERLHF_NETWORK_POLICY", "true") == "true",
        "monitoring_namespaces": json.loads(monitoring) if monitoring else None,
        "allowed_images": names("KUBERLHF_ALLOWED_IMAGES"),
        "allowed_service_accounts": names("KUBERLHF_ALLOWED_SERVICE_ACCOUNTS"),
    }
    if env("KUBERLHF_KUBERAY_PEER"):
        settings["kuberay"] = json.loads(env("KUBERLHF_KUBERAY_PEER"))
    return OperatorSettings(**settings)


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
def job_changed(body: kopf.Body, retry: int, **_: Any) -> None:
    reconcile_job(dict(body), trigger="job", retry=retry)


@kopf.on.field(RAY_GROUP, RAY_VERSION, RAY_PLURAL, field="status", labels={JOB_LABEL: kopf.PRESENT})
def rayjob_status_changed(body: kopf.Body, namespace: str, retry: int, **_: Any) -> None:
    job = owner_job(body, namespace)
    if job is not None:
        reconcile_job(job, trigger="rayjob", retry=retry)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def job_deleted(body: kopf.Body, **_: Any) -> None:
    PHASES.record(_key(dict(body)), None)


@kopf.on.event("", "v1", "configmaps", labels={JOB_LABEL: kopf.PRESENT})
@kopf.on.event(RAY_GROUP, RAY_VERSION, RAY_PLURAL, labels={JOB_LABEL: kopf.PRESENT})
def child_event(event: kopf.RawEvent, body: kopf.Body, namespace: str, **_: Any) -> None:
    """A job's ConfigMap or RayJob deleted (by hand, by a TTL): reconcile the job, which makes a running job's
    lost children again and leaves a finished job alone. (A watch event: a child deleted at once, without a
    finalizer, reaches no delete handler.)"""
    if event.get("type") != "DELETED":
        return
    job = owner_job(body, namespace)
    if job is not None and not job["metadata"].get("deletionTimestamp"):
        reconcile_job(job, trigger="child")


def owner_job(child: kopf.Body, namespace: str) -> dict[str, Any] | None:
    """The RLHFJob a child belongs to (its JOB_LABEL), or None when the job is gone (its children go with it)."""
    try:
        return kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, child["metadata"]["labels"][JOB_LABEL])
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def reconcile_job(job: dict[str, Any], trigger: str, retry: int = 0) -> None:
    RECONCILES.labels(trigger=trigger).inc()
    started = time.perf_counter()
    try:
        actions = reconcile(job, read_children(job), operator_settings(), _now())
        apply(job, actions, retry)
    except Exception:
        RECONCILE_ERRORS.labels(trigger=trigger).inc()
        raise
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
    PHASES.record(_key(job), actions.status.get("phase"))


def apply(job: dict[str, Any], actions: Any, retry: int) -> None:
    """Write the children, then the status. A child the API refuses puts the API's reason and message in the
    job's status, then fails the handler: permanently for an invalid object, else retried with a backoff that
    doubles from 10 s to 5 minutes."""
    namespace = namespace_of(job)
    status = actions.status
    try:
        for child in actions.create:
            try:
                API[child["kind"]].create(namespace, child)
            except ApiException as err:
                if err.status != 409:  # 409: created by an earlier, interrupted reconcile: keep it
                    raise ChildRefused(child, err) from None
        for child in actions.replace:
            try:
                API[child["kind"]].patch(namespace, child["metadata"]["name"], replacement_patch(child))
            except ApiException as err:
                raise ChildRefused(child, err) from None
        if actions.patch_rayjob is not None:
            try:
                API["RayJob"].patch(namespace, job["metadata"]["name"], actions.patch_rayjob)
            except ApiException as err:
                raise ChildRefused({"kind": "RayJob", "metadata": {"name": job["metadata"]["name"]}}, err) from None
    except ChildRefused as refused:
        status, permanent = child_error(job.get("status") or {}, job["metadata"].get("generation"),
                                        refused.kind, refused.name, refused.code, refused.reason, refused.message,
                                        _now())
        write_status(job, status)
        if permanent:
            raise kopf.PermanentError(refused.message) from None
        raise kopf.TemporaryError(refused.message, delay=min(300, 10 * 2 ** min(retry, 5))) from None
    write_status(job, status)


def write_status(job: dict[str, Any], status: dict[str, Any]) -> None:
    if status != (job.get("status") or {}):
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace_of(job), PLURAL, job["metadata"]["name"],
            {"status": status_patch(job.get("status"), status)})


class ChildRefused(Exception):
    """The API server refused a child: its kind and name, and the API's status code, reason and message."""

    def __init__(self, child: dict[str, Any], err: ApiException) -> None:
        self.kind, self.name, self.code = child["kind"], child["metadata"]["name"], int(err.status or 0)
        try:
            body = json.loads(err.body or "{}")
        except ValueError:
            body = {}
        self.reason = str(body.get("reason") or err.reason or "")
        self.message = str(body.get("message") or err.reason or err)[:1024]
        super().__init__(self.message)


def replacement_patch(child: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that makes the object in the cluster hold `child`'s content (lists and map keys it sets)."""
    meta = child["metadata"]
    patch = {k: v for k, v in child.items() if k not in ("apiVersion", "kind", "metadata")}
    patch["metadata"] = {"labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})}
    return patch


def read_children(job: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """The job's children as they are in the cluster, by kind (None: absent)."""
    namespace, name = namespace_of(job), job["metadata"]["name"]
    found = {}
    for kind, name_of in CHILD_NAMES.items():
        try:
            found[kind] = API[kind].read(namespace, name_of(job))
        except ApiException as err:
            if err.status != 404:
                raise
            found[kind] = None
    return found


def _key(job: dict[str, Any]) -> str:
    return f"{namespace_of(job)}/{job['metadata']['name']}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

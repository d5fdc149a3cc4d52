"""Create, read and patch each kind of child an RLHFJob has, with the official Kubernetes client. Objects go in
and come out as plain JSON-shaped dicts (camelCase keys), the form the pure reconcile works on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import kubernetes

from kuberlhf_operator.rayjob import configmap_name, job_account_name, status_role_name

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayjobs"


@dataclass(frozen=True)
class KindApi:
    """One kind's calls: the client class and the suffix of its `*_namespaced_<suffix>` methods."""

    client: Callable[[], Any]
    suffix: str

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        getattr(self.client(), f"create_namespaced_{self.suffix}")(namespace, body)

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        found = getattr(self.client(), f"read_namespaced_{self.suffix}")(name, namespace)
        return kubernetes.client.ApiClient().sanitize_for_serialization(found)

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        getattr(self.client(), f"patch_namespaced_{self.suffix}")(name, namespace, body)


class RayJobApi:
    """RayJobs, a custom resource: through CustomObjectsApi."""

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        kubernetes.client.CustomObjectsApi().create_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, body)

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        return kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name)

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name, body)


API: dict[str, Any] = {
    "ConfigMap": KindApi(lambda: kubernetes.client.CoreV1Api(), "config_map"),
    "ServiceAccount": KindApi(lambda: kubernetes.client.CoreV1Api(), "service_account"),
    "Role": KindApi(lambda: kubernetes.client.RbacAuthorizationV1Api(), "role"),
    "RoleBinding": KindApi(lambda: kubernetes.client.RbacAuthorizationV1Api(), "role_binding"),
    "NetworkPolicy": KindApi(lambda: kubernetes.client.NetworkingV1Api(), "network_policy"),
    "RayJob": RayJobApi(),
}

# The name of each child, from the job (rayjob.build_children names them so).
CHILD_NAMES: dict[str, Callable[[dict[str, Any]], str]] = {
    "ConfigMap": configmap_name,
    "ServiceAccount": lambda job: job_account_name(job["metadata"]["name"]),
    "Role": lambda job: status_role_name(job["metadata"]["name"]),
    "RoleBinding": lambda job: status_role_name(job["metadata"]["name"]),
    "NetworkPolicy": lambda job: job["metadata"]["name"],
    "RayJob": lambda job: job["metadata"]["name"],
}

"""Who may reach a job's pods, and what the pods may do: pure builders of the per-job NetworkPolicy, the job's
own ServiceAccount and the Role that lets it write its own RLHFJob's status and nothing else.

Network: the head runs the Ray dashboard (the Jobs API runs any entrypoint it is sent) and the GCS, and the pods
hold the job's secrets. Ray's token auth (KubeRay `authOptions`) guards those ports; the NetworkPolicy is the
second wall: ingress to the job's Ray pods only from the job's own pods, from KubeRay's submitter pod for this
RayJob, from the KubeRay operator (it polls the dashboard for the job's state) and, on the metrics ports only,
from the monitoring namespaces named in the chart values. `kubectl port-forward` to the dashboard still works:
it enters the pod's network namespace through the kubelet, which NetworkPolicies do not filter.

Identity: each job gets a ServiceAccount of its own (unless the spec names one) bound to a Role whose
`resourceNames` is the job, so a compromised job pod can patch its own RLHFJob's status and no other's.
"""

from __future__ import annotations

from typing import Any

RAY_METRICS_PORT = 8080
DASHBOARD_PORT = 8265
RAYJOB_SUBMITTER_LABELS = {"ray.io/originated-from-crd": "RayJob"}  # plus ray.io/originated-from-cr-name


def network_policy(job: dict[str, Any], metadata: dict[str, Any], job_label: str, metrics_port: int | None,
                   monitoring_namespaces: dict[str, str] | None, kuberay: dict[str, Any]) -> dict[str, Any]:
    """The NetworkPolicy of a job's Ray pods (the pods labelled `job_label: <job name>`)."""
    name = job["metadata"]["name"]
    own_pods = {"podSelector": {"matchLabels": {job_label: name}}}
    submitter = {"podSelector": {"matchLabels": {**RAYJOB_SUBMITTER_LABELS, "ray.io/originated-from-cr-name": name}}}
    ingress: list[dict[str, Any]] = [
        {"from": [own_pods, submitter]},
        {"from": [kuberay], "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
    ]
    if monitoring_namespaces is not None:
        ports = [{"protocol": "TCP", "port": RAY_METRICS_PORT}]
        if metrics_port:
            ports.append({"protocol": "TCP", "port": metrics_port})
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": dict(monitoring_namespaces)}}],
                        "ports": ports})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata,
        "spec": {"podSelector": {"matchLabels": {job_label: name}}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def service_account(metadata: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


def status_role(job: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Read this RLHFJob and patch its status: what the job's progress reporter needs, for this job only."""
    name = job["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": metadata,
        "rules": [
            {"apiGroups": ["kuberlhf.io"], "resources": ["rlhfjobs"], "resourceNames": [name], "verbs": ["get"]},
            {"apiGroups": ["kuberlhf.io"], "resources": ["rlhfjobs/status"], "resourceNames": [name],
             "verbs": ["get", "patch"]},
        ],
    }


def status_role_binding(metadata: dict[str, Any], role: str, account: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }

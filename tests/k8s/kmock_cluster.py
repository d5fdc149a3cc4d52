"""An in-memory Kubernetes API (kmock) on a real HTTP port, in a thread of its own, for running the real
operator (kopf) against: the test thread talks to it over HTTP with the official client, like kubectl.

kmock stores what it is sent and does no more; `StampingEmulator` adds what the operator relies on from a
real API server: a uid, a creation time and a growing resourceVersion on every write (kopf tracks its own
patches by resourceVersion; without one it re-runs handlers on stale events). Not emulated: schema
validation (tests/k8s/test_crd.py covers it), owner-reference garbage collection, and generation bumps.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import aiohttp.web
import kmock

RLHFJOBS = kmock.resource("kuberlhf.io", "v1alpha1", "rlhfjobs")
RAYJOBS = kmock.resource("ray.io", "v1", "rayjobs")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SERVICEACCOUNTS = kmock.resource("", "v1", "serviceaccounts")
ROLES = kmock.resource("rbac.authorization.k8s.io", "v1", "roles")
ROLEBINDINGS = kmock.resource("rbac.authorization.k8s.io", "v1", "rolebindings")
NETWORKPOLICIES = kmock.resource("networking.k8s.io", "v1", "networkpolicies")
VERBS = {"create", "get", "list", "watch", "patch", "delete"}


class StampingEmulator(kmock.KubernetesEmulator):
    versions = itertools.count(1)
    refusals: dict[tuple[str, str], tuple[int, str, str]]  # (action, plural) -> (code, reason, message)

    async def _handle(self, request: Any) -> Any:
        refusal = self.refusals.get((str(request.action), getattr(request.resource, "plural", None)))
        if refusal is not None:  # as an API server that refuses it (quota, RBAC, admission webhook)
            code, reason, message = refusal
            return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                              "code": code, "reason": reason, "message": message}, status=code)
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE) and \
                isinstance(request.data, list):  # a JSON patch (kopf's finalizer patches test the version)
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": str(next(self.versions))})
        elif request.resource is not None and isinstance(request.data, dict) and \
                request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self.versions))
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)
        return await super()._handle(request)


class KmockCluster:
    """Start with `with KmockCluster(["team-a"]) as cluster:`; `cluster.kubeconfig(path)` writes a kubeconfig."""

    def __init__(self, namespaces: list[str]) -> None:
        self.namespaces = namespaces
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self.stopping = asyncio.Event()
        async with StampingEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.refusals = {}
            resources = emulator.resources
            resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False,
                                                            verbs={"get", "list", "watch"})
            resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs=VERBS)
            resources["v1/serviceaccounts"] = kmock.ResourceInfo(kind="ServiceAccount", namespaced=True,
                                                                 verbs=VERBS)
            for plural, kind in (("roles", "Role"), ("rolebindings", "RoleBinding")):
                resources[f"rbac.authorization.k8s.io/v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=True,
                                                                                        verbs=VERBS)
            resources["networking.k8s.io/v1/networkpolicies"] = kmock.ResourceInfo(kind="NetworkPolicy",
                                                                                   namespaced=True, verbs=VERBS)
            resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"create", "list"})
            resources["kuberlhf.io/v1alpha1/rlhfjobs"] = kmock.ResourceInfo(
                kind="RLHFJob", singular="rlhfjob", namespaced=True, subresources={"status"}, verbs=VERBS)
            resources["ray.io/v1/rayjobs"] = kmock.ResourceInfo(
                kind="RayJob", singular="rayjob", namespaced=True, subresources={"status"}, verbs=VERBS)
            for namespace in self.namespaces:
                emulator.objects["v1/namespaces", None, namespace] = {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self.ready.set()
            await self.stopping.wait()

    def __enter__(self) -> KmockCluster:
        self.thread.start()
        assert self.ready.wait(10), "kmock did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: kmock, cluster: {{server: \"{self.url}\"}}}}]\n"
            "users: [{name: kmock, user: {token: test}}]\n"
            "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
            "current-context: kmock\n")
        return path

    def stored(self, resource: Any, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the emulator holds it (None when absent or deleted), read inside its loop."""
        def read() -> dict[str, Any] | None:
            key = (resource, namespace, name)
            if key not in self.emulator.objects or self.emulator.objects[key].deleted:
                return None
            return self.emulator.objects[key].raw

        async def inside() -> dict[str, Any] | None:
            return read()

        return asyncio.run_coroutine_threadsafe(inside(), self.loop).result(5)

    def created_names(self, resource: Any) -> list[str]:
        """The names of every object of `resource` created so far (successfully or not)."""
        async def inside() -> list[str]:
            return [(request.data or {}).get("metadata", {}).get("name")
                    for request in self.emulator[kmock.action.CREATE, resource]]

        return asyncio.run_coroutine_threadsafe(inside(), self.loop).result(5)

    def refuse(self, action: Any, resource: Any, code: int, reason: str, message: str) -> None:
        """From now on, answer `action` on `resource` with this error (as a quota or a webhook would)."""
        self.emulator.refusals[(str(action), resource.plural)] = (code, reason, message)

    def allow(self, action: Any, resource: Any) -> None:
        self.emulator.refusals.pop((str(action), resource.plural), None)

    def requests(self, *criteria: Any) -> int:
        """How many requests so far matched kmock's criteria (e.g. kmock.action.CREATE, RAYJOBS)."""
        async def inside() -> int:
            return len(self.emulator[criteria])

        return asyncio.run_coroutine_threadsafe(inside(), self.loop).result(5)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)

"""How a process that owns some files (a policy rank's weights and optimizer state, rank 0's final model) puts
them into the job's storage, and takes them back on resume, wherever it runs.

On a KubeRay cluster the driver runs on the head pod and the trainers on worker pods; they share a disk only
if the user mounted a volume. So nothing assumes a shared path: the driver writes a probe (a random token)
at the root of the storage, and a worker that reads the same token back writes and reads the storage itself
(an object store, a shared volume, or the one local disk of an embedded Ray). A worker that cannot see it
(a local directory on another pod's disk) sends its files, in chunks, to a relay actor that the driver
started on its own node, which writes them there; a resume reads them back the same way. An object store a
worker cannot read is an error naming the node (credentials missing there), never a silent fallback.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.storage.store import Storage, StorageError, local_path_inside

PROBE_KEY = ".kuberlhf-probe"
CHUNK_BYTES = 64 * 2**20  # the relay moves files in pieces of this size (bounded memory on both sides)


@dataclass(frozen=True)
class StorageTarget:
    """What a worker needs to reach a storage: its root, the probe token, and the driver-side relay."""

    url: str
    field: str
    probe: str
    relay: Any = None  # a StorageRelay actor on the driver's node (local roots on a Ray cluster), or None

    def storage(self) -> Storage:
        return Storage(self.url, self.field)

    def visible_here(self) -> bool:
        return _visible(self.url, self.field, self.probe)


_seen: dict[tuple[str, str], bool] = {}


def _visible(url: str, field: str, probe: str) -> bool:
    if (url, probe) not in _seen:
        try:
            _seen[url, probe] = Storage(url, field).read_bytes(PROBE_KEY) == probe.encode()
        except (StorageError, OSError):
            _seen[url, probe] = False
    return _seen[url, probe]


def open_target(storage: Storage) -> StorageTarget:
    """The driver's side: write a fresh probe at the storage root, and for a local root on a Ray cluster,
    start the relay on this node (workers elsewhere write through it)."""
    probe = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    storage.put_bytes(probe.encode(), PROBE_KEY)
    import ray

    relay = start_on_this_node(StorageRelay, storage.url, storage.field) if ray.is_initialized() else None
    return StorageTarget(storage.url, storage.field, probe, relay)


def start_on_this_node(actor_class: type, *args: Any) -> Any:
    """A Ray actor of `actor_class` on the caller's node (the driver's), using no CPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(actor_class).options(num_cpus=0, scheduling_strategy=here).remote(*args)


class StorageRelay:
    """A Ray actor on the driver's node: it writes and reads a local storage root for workers on other nodes,
    and commits checkpoints for the offline stages' rank 0 (which may run where the root is not)."""

    def __init__(self, url: str, field: str) -> None:
        self.storage = Storage(url, field)

    def begin_checkpoint(self, step: int) -> str:
        from kuberlhf.storage.checkpoints import Checkpoints

        return Checkpoints(self.storage).begin(step)

    def commit_checkpoint(self, step: int, files: dict[str, int], state: dict[str, Any], keep: int,
                          stopped: str | None = None) -> str:
        from kuberlhf.storage.checkpoints import Checkpoints

        return Checkpoints(self.storage).commit(step, files, state, keep, stopped).name

    def commit_final(self, files: dict[str, int], about: dict[str, Any]) -> None:
        from kuberlhf.storage.checkpoints import commit_final

        commit_final(self.storage, files, about)

    def write(self, key: str, chunk: bytes, first: bool) -> None:
        path = Path(self.storage.path(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb" if first else "ab") as handle:
            handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

    def read(self, key: str, offset: int) -> bytes:
        with open(self.storage.path(key), "rb") as handle:
            handle.seek(offset)
            return handle.read(CHUNK_BYTES)


def deliver(source: Path, target: StorageTarget, key: str) -> dict[str, int]:
    """A worker's side: put every file under `source` at `key` in the storage; returns {relative path: size}."""
    if target.visible_here():
        return target.storage().upload_tree(source, key)
    relay = _relay_or_error(target)
    import ray

    files = {}
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = file.relative_to(source).as_posix()
        with open(file, "rb") as handle:
            first = True
            while True:  # an empty file is one empty chunk
                chunk = handle.read(CHUNK_BYTES)
                ray.get(relay.write.remote(f"{key}/{relative}", chunk, first))
                first = False
                if len(chunk) < CHUNK_BYTES:
                    break
        files[relative] = file.stat().st_size
    return files


def fetch(target: StorageTarget, key: str, files: dict[str, int], destination: Path) -> None:
    """A worker's side: the files of a manifest under `key`, into `destination`."""
    if target.visible_here():
        target.storage().download_tree(key, files, destination)
        return
    relay = _relay_or_error(target)
    import ray

    for relative, size in sorted(files.items()):
        path = local_path_inside(destination, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            while handle.tell() < size:
                chunk = ray.get(relay.read.remote(f"{key}/{relative}", handle.tell()))
                if not chunk:
                    raise StorageError(f"{target.field}: {target.url}/{key}/{relative} is shorter than its "
                                       f"manifest's {size} bytes")
                handle.write(chunk)


def _relay_or_error(target: StorageTarget) -> Any:
    """The relay, for a local root on another node; an object store or volume this node cannot read is an
    error (its credentials or mount are missing here), not a detour through the driver."""
    if target.relay is None or not target.storage().is_local:
        raise StorageError(f"{target.field}: {target.url} cannot be read from {socket.gethostname()} (its "
                           "credentials or mount are missing on this node)")
    return target.relay

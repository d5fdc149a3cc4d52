"""One writer per job output: two runs of a job on the same outputs would interleave their metrics and
overwrite each other's checkpoints.

On a local disk or a shared volume, an exclusive `flock` on `<root>/.kuberlhf.lock` is held for the run (the
kernel drops it when the process dies, so it is never stale). Every storage also holds a lease,
`<root>/.kuberlhf-lease.json`, naming the holder (host, pid, the RLHFJob's uid when the operator started it)
and renewed every HEARTBEAT_SECONDS by a thread. A second run refuses, naming the holder. A lease is stale,
and taken over, when its heartbeat is older than STALE_SECONDS, when its holder is a dead process on this
host, or when it belongs to an earlier attempt of the same RLHFJob (KubeRay retries one attempt at a time).
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from kuberlhf.errors import UserError
from kuberlhf.storage.store import Storage

LOCK_FILE = ".kuberlhf.lock"
LEASE_KEY = ".kuberlhf-lease.json"
OWNER_ENV = "KUBERLHF_OWNER"  # set by the operator: the RLHFJob's uid
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


def holder() -> dict[str, Any]:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "owner": os.environ.get(OWNER_ENV), "since": now,
            "heartbeat": now}


def describe(lease: dict[str, Any]) -> str:
    owner = f", RLHFJob uid {lease['owner']}" if lease.get("owner") else ""
    age = time.time() - float(lease.get("heartbeat", 0))
    return f"pid {lease.get('pid')} on {lease.get('host')}{owner}, alive {age:.0f} s ago"


def is_stale(lease: dict[str, Any], me: dict[str, Any]) -> bool:
    if time.time() - float(lease.get("heartbeat", 0)) > STALE_SECONDS:
        return True
    if me["owner"] and lease.get("owner") == me["owner"]:
        return True  # an earlier attempt of this same RLHFJob
    if lease.get("host") == me["host"]:
        return not _alive(int(lease.get("pid", 0)))
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


class Lease:
    """The lease on one storage root, held from `acquire` to `release`."""

    def __init__(self, storage: Storage) -> None:
        self.storage, self.me = storage, holder()
        self._lock: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        if self.storage.is_local:
            self._lock_local()
        try:
            current = self.storage.read_json(LEASE_KEY)
        except ValueError:
            current = None  # a cut lease file: nobody can be holding it
        if isinstance(current, dict) and not is_stale(current, self.me):
            self.release()
            raise self._busy(current)
        self.storage.write_json(LEASE_KEY, self.me)
        if self.storage.read_json(LEASE_KEY) != self.me:  # another run wrote its lease at the same moment
            self.release()
            raise self._busy(self.storage.read_json(LEASE_KEY) or {})
        self._thread = threading.Thread(target=self._renew, name="kuberlhf-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            try:
                if self.storage.read_json(LEASE_KEY) == self.me:
                    self.storage.remove(LEASE_KEY)
            except (ValueError, UserError):
                pass  # leave it: it goes stale
        if self._lock is not None:
            self._lock.close()  # drops the flock
            self._lock = None

    def _lock_local(self) -> None:
        root = Path(self.storage.root)
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            try:
                current = self.storage.read_json(LEASE_KEY) or {}
            except ValueError:
                current = {}
            raise self._busy(current) from None
        self._lock = handle

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.me["heartbeat"] = time.time()
            try:
                self.storage.write_json(LEASE_KEY, self.me)
            except UserError:
                pass  # a storage hiccup: the next heartbeat tries again, and STALE_SECONDS is 10 of them

    def _busy(self, current: dict[str, Any]) -> UserError:
        who = describe(current) if current else "another process"
        return UserError(f"{self.storage.field}: {self.storage.url} is in use by another run ({who}); wait for it "
                         f"to finish or stop it, or choose another {self.storage.field}")


@contextmanager
def leased(storages: list[Storage]) -> Iterator[None]:
    """Hold the lease on each storage (each root once) for the duration of the block."""
    with ExitStack() as stack:
        seen = set()
        for storage in storages:
            if storage.url in seen:
                continue
            seen.add(storage.url)
            lease = Lease(storage)
            lease.acquire()
            stack.callback(lease.release)
        yield

"""One place a job's outputs go: a local directory, a shared volume, or an object store (any fsspec URL:
s3://, gs://, az://, file://), behind one small interface.

Every write that must survive a crash is made durable here: on a local disk files are fsynced and a JSON
marker is written to a temporary name, fsynced, renamed into place and its directory fsynced; on an object
store one `put` is already all-or-nothing. Keys are relative paths that stay inside the root: `..`, absolute
paths and empty parts are refused, whether they come from our code or from a listing of the store. Transient
errors (network, throttling) are retried with backoff; a failure that outlasts the retries ends the job with
one line naming the key.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from kuberlhf.errors import UserError

T = TypeVar("T")
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds between tries: five tries in about 8 s
NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, UserError)


class StorageError(UserError):
    """Storage that cannot be used (unreachable, refused, a key outside the root): one line, no traceback."""


def safe_key(key: str) -> str:
    """`key` if it is a relative path that stays inside the root, else a StorageError."""
    parts = key.split("/")
    if "\\" in key or any(part in ("", ".", "..") for part in parts):  # also "", "/abs", "a//b", "a/"
        raise StorageError(f"storage key {key!r} is not a plain relative path; refused (a key may not leave the "
                           "job's storage)")
    return key


def local_path_inside(directory: Path, relative: str) -> Path:
    """`directory/relative` for a file named by the store or a manifest, refusing one that would land outside."""
    return directory / safe_key(relative)


class Storage:
    """A root (local path or fsspec URL) and the operations the job needs under it. `field` names the spec
    field the root came from, for error messages."""

    def __init__(self, root: str | Path, field: str) -> None:
        import fsspec

        self.url, self.field = str(root), field
        target = self.url if "://" in self.url else f"file://{Path(self.url).resolve()}"
        try:
            self.fs, path = fsspec.core.url_to_fs(target)
        except (ImportError, ValueError) as err:  # fsspec names the package a protocol needs
            raise StorageError(f"{field}: cannot open {self.url}: {err}") from None
        self.root = path.rstrip("/") or "/"
        self.is_local = "file" in _protocols(self.fs)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def child(self, key: str) -> Storage:
        """The storage rooted at `key` under this one (e.g. a chained job's stage)."""
        return Storage(f"{self.url.rstrip('/')}/{safe_key(key)}", self.field)

    def path(self, key: str) -> str:
        return f"{self.root}/{safe_key(key)}"

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    # ------------------------------------------------------------------------------------------ reading

    def exists(self, key: str) -> bool:
        return self._retry(lambda: self.fs.exists(self.path(key)), f"look for {key}")

    def size(self, key: str) -> int | None:
        """The size of the file at `key`, or None if there is none."""
        def info() -> int | None:
            try:
                return int(self.fs.info(self.path(key))["size"])
            except FileNotFoundError:
                return None
        return self._retry(info, f"look at {key}")

    def names(self, key: str = "") -> list[str]:
        """The names directly under `key` (files and directories), sorted; [] if there is nothing."""
        directory = self.path(key) if key else self.root

        def listing() -> list[str]:
            try:
                return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(directory, detail=False))
            except FileNotFoundError:
                return []
        return [name for name in self._retry(listing, f"list {key or '/'}") if name]

    def read_bytes(self, key: str) -> bytes | None:
        def cat() -> bytes | None:
            try:
                return self.fs.cat_file(self.path(key))
            except FileNotFoundError:
                return None
        return self._retry(cat, f"read {key}")

    def read_json(self, key: str) -> Any:
        """The JSON document at `key`; None if there is none; a ValueError naming it if it is not JSON (an
        empty or cut file)."""
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.describe(key)} is not valid JSON ({len(data)} bytes: {err})") from None

    def get_file(self, key: str, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        self._retry(lambda: self.fs.get_file(self.path(key), str(destination)), f"download {key}")

    def download_tree(self, key: str, files: dict[str, int], destination: Path) -> None:
        """The files of a manifest ({relative path: size}) under `key`, into `destination`; each checked."""
        for relative, size in sorted(files.items()):
            target = local_path_inside(destination, relative)
            self.get_file(f"{key}/{relative}", target)
            if target.stat().st_size != size:
                raise StorageError(f"{self.field}: {self.describe(f'{key}/{relative}')} has "
                                   f"{target.stat().st_size} bytes, its manifest says {size}")

    # ------------------------------------------------------------------------------------------ writing

    def put_file(self, source: Path, key: str) -> None:
        path = self.path(key)

        def put() -> None:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)  # a no-op on object stores
            self.fs.put_file(str(source), path)
            if self.is_local:
                _fsync_file(path)
        self._retry(put, f"write {key}")

    def put_bytes(self, data: bytes, key: str) -> None:
        path = self.path(key)

        def pipe() -> None:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            self.fs.pipe_file(path, data)
            if self.is_local:
                _fsync_file(path)
        self._retry(pipe, f"write {key}")

    def upload_tree(self, source: Path, key: str) -> dict[str, int]:
        """Every file under `source`, to `key/...`; returns the manifest {relative path: size}."""
        files = {}
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = file.relative_to(source).as_posix()
            self.put_file(file, f"{key}/{relative}")
            files[relative] = file.stat().st_size
        return files

    def write_json(self, key: str, document: Any) -> None:
        """Write a JSON document all-or-nothing: a reader sees the old one, the new one, or none, never a
        part (local: temporary file, fsync, rename, fsync of the directory; object store: one put)."""
        data = json.dumps(document, indent=2, sort_keys=True).encode()
        if not self.is_local:
            self.put_bytes(data, key)
            return
        path = Path(self.path(key))

        def replace() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            fsync_directory(path.parent)
        self._retry(replace, f"write {key}")

    def remove(self, key: str) -> None:
        """Delete the file or directory at `key` (nothing if there is none)."""
        def rm() -> None:
            try:
                self.fs.rm(self.path(key), recursive=True)
            except FileNotFoundError:
                pass
        self._retry(rm, f"delete {key}")
        if self.is_local:
            fsync_directory(Path(self.path(key)).parent)

    def check_writable(self) -> None:
        """Write and delete a probe object: wrong credentials or a missing bucket fail before training."""
        probe = f".kuberlhf-write-probe-{os.getpid()}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(self.path(probe), b"ok")
            self.fs.rm(self.path(probe))
        except Exception as err:  # noqa: BLE001 - every backend raises its own kinds
            raise StorageError(f"{self.field}: cannot write to {self.url}: {type(err).__name__}: {err}") from None

    # ------------------------------------------------------------------------------------------ retries

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        """Run `operation`, retrying transient failures (RETRY_DELAYS); a lasting one is a StorageError."""
        for delay in (*RETRY_DELAYS, None):
            try:
                return operation()
            except NOT_TRANSIENT:
                raise
            except Exception as err:  # noqa: BLE001 - backends raise their own transient kinds
                if delay is None:
                    raise StorageError(f"{self.field}: could not {what} in {self.url} after "
                                       f"{len(RETRY_DELAYS) + 1} tries: {type(err).__name__}: {err}") from None
                time.sleep(delay)
        raise AssertionError("unreachable")


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (POSIX: the directory entry is data of its own)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)

"""`checkpoint.uri`: a copy of every checkpoint in an object store (any fsspec URL: s3://, gs://, az://, or
file:// for a mounted path), so a job whose local checkpoint directory is gone (a new pod without a PVC, a
KubeRay retry on a new cluster) resumes from the store.

Object stores cannot rename, so a stored checkpoint is complete when its `trainer_state.json` exists: it is
uploaded last, after every other file, and removed first when a step is stored again. Checkpoints are written
locally (`checkpoint.dir`, atomically) and uploaded from there; a run that finds a newer complete checkpoint
in the store than in its directory downloads it (into a partial directory, renamed when complete) and
resumes from it.
"""

from __future__ import annotations

import posixpath
import shutil
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError
from kuberlhf.trainers.checkpoint import STATE_FILE, newest_checkpoint, read_trainer_state


class CheckpointStore:
    def __init__(self, uri: str):
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as err:  # fsspec names the package a protocol needs
            raise UserError(f"spec.checkpoint.uri: cannot open {uri}: {err}") from None
        self.root = self.root.rstrip("/")
        self.uri = uri

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def complete(self) -> list[str]:
        """Names of the stored checkpoints that are complete, oldest first."""
        if not self.fs.exists(self.root):
            return []
        names = sorted(Path(entry).name for entry in self.fs.ls(self.root, detail=False))
        return [n for n in names if n.startswith("step-") and self.fs.exists(self.path(f"{n}/{STATE_FILE}"))]

    def upload(self, checkpoint: Path, keep: int) -> None:
        """Store a committed local checkpoint (its state file last), then drop stored ones beyond `keep`."""
        target = self.path(checkpoint.name)
        if self.fs.exists(f"{target}/{STATE_FILE}"):  # stored before: incomplete until this copy is in place
            self.fs.rm(f"{target}/{STATE_FILE}")
        for file in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != STATE_FILE):
            self.put(file, f"{target}/{file.relative_to(checkpoint).as_posix()}")
        self.put(checkpoint / STATE_FILE, f"{target}/{STATE_FILE}")
        for old in self.complete()[:-keep]:
            self.fs.rm(self.path(old), recursive=True)

    def put(self, source: Path, target: str) -> None:
        self.fs.makedirs(self.fs._parent(target), exist_ok=True)  # a no-op on object stores, needed on disks
        self.fs.put_file(str(source), target)

    def check_writable(self) -> None:
        """Write and delete a probe object: wrong credentials or a missing bucket fail before training."""
        probe = self.path(".kuberlhf-write-probe")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe(probe, b"ok")
            self.fs.rm(probe)
        except Exception as err:  # noqa: BLE001 - every backend raises its own kinds
            raise UserError(f"spec.checkpoint.uri: cannot write to {self.uri}: {type(err).__name__}: {err}") from None

    def fetch_newer(self, directory: Path) -> Path | None:
        """Download the newest stored checkpoint if it is newer than the newest in `directory`; its local
        path, or None when the directory is as new as the store."""
        stored = self.complete()
        if not stored:
            return None
        local = newest_checkpoint(directory)
        if local is not None and read_trainer_state(local)["step"] >= int(stored[-1].removeprefix("step-")):
            return None
        partial = directory / f".{stored[-1]}.download"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        source = self.path(stored[-1])
        for file in self.fs.find(source):
            relative = posixpath.relpath(file, source)  # fsspec lists paths in the form `source` has
            if relative != STATE_FILE:
                (partial / relative).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(file, str(partial / relative))
        self.fs.get_file(f"{source}/{STATE_FILE}", str(partial / STATE_FILE))
        final = directory / stored[-1]
        if final.exists():  # a local copy of that step without its state file: never complete
            shutil.rmtree(final)
        partial.rename(final)
        return final


def checkpoint_store(spec: Any) -> CheckpointStore | None:
    """The job's store (`spec.checkpoint.uri`), or None."""
    return CheckpointStore(spec.checkpoint.uri) if spec.checkpoint.uri else None


def fetch_stored_checkpoint(job: Any, note: Any) -> None:
    """Before a run looks for its newest checkpoint: bring the store's newest into `checkpoint.dir` if the
    directory has nothing as new (a new pod, a new cluster)."""
    store = checkpoint_store(job.spec)
    if store is None:
        return
    store.check_writable()
    if (fetched := store.fetch_newer(Path(job.checkpoint_dir))) is not None:
        note(f"downloaded {fetched.name} from {store.uri}")

"""`checkpoint.uri`: checkpoints copied to an object store (fsspec's in-memory filesystem here, which like an
object store cannot rename), the state file last; a directory without a new enough checkpoint fetches the
store's newest; incomplete stored checkpoints are never used; `keep` applies in the store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest

from kuberlhf.errors import UserError
from kuberlhf.trainers.checkpoint import STATE_FILE, commit_checkpoint, newest_checkpoint, partial_dir
from kuberlhf.trainers.checkpoint_store import CheckpointStore


@pytest.fixture()
def store() -> CheckpointStore:
    return CheckpointStore(f"memory://kuberlhf-test-{uuid.uuid4().hex}/ckpt")


def local_checkpoint(directory: Path, step: int, keep: int = 5) -> Path:
    partial = partial_dir(directory, step)
    (partial / "policy").mkdir()
    (partial / "policy" / "weights.bin").write_bytes(bytes([step]) * 64)
    return commit_checkpoint(partial, step, {"sampler": {"epoch": 0, "index": step}}, keep)


def test_a_stored_checkpoint_is_complete_only_with_its_state_file_which_goes_last(store, tmp_path, monkeypatch):
    order = []
    put = store.fs.put_file
    monkeypatch.setattr(store.fs, "put_file", lambda source, target, **kw: (order.append(Path(target).name),
                                                                            put(source, target, **kw)))
    store.upload(local_checkpoint(tmp_path / "a", 3), keep=2)
    assert order == ["weights.bin", STATE_FILE] and store.complete() == ["step-00000003"]
    store.fs.pipe(store.path("step-00000006/policy/weights.bin"), b"half")  # an upload cut short
    assert store.complete() == ["step-00000003"]


def test_a_directory_without_checkpoints_fetches_the_newest_complete_one(store, tmp_path):
    for step in (3, 6):
        store.upload(local_checkpoint(tmp_path / "writer", step), keep=5)
    store.fs.pipe(store.path("step-00000009/policy/weights.bin"), b"half")  # incomplete: ignored
    fresh = tmp_path / "new-pod" / "checkpoints"
    fetched = store.fetch_newer(fresh)
    assert fetched == fresh / "step-00000006" and newest_checkpoint(fresh) == fetched
    assert (fetched / "policy" / "weights.bin").read_bytes() == bytes([6]) * 64
    assert json.loads((fetched / STATE_FILE).read_text())["sampler"] == {"epoch": 0, "index": 6}
    assert store.fetch_newer(fresh) is None  # as new as the store: nothing to do
    local_checkpoint(fresh, 8)
    assert store.fetch_newer(fresh) is None  # newer locally: the store is not used


def test_keep_applies_in_the_store_and_a_step_stored_again_replaces_the_old_copy(store, tmp_path):
    for step in (3, 6, 9):
        store.upload(local_checkpoint(tmp_path / "a", step), keep=2)
    assert store.complete() == ["step-00000006", "step-00000009"]
    again = local_checkpoint(tmp_path / "b", 9)
    (again / "policy" / "weights.bin").write_bytes(b"new")
    store.upload(again, keep=2)
    assert store.fs.cat(store.path("step-00000009/policy/weights.bin")) == b"new"
    assert store.complete() == ["step-00000006", "step-00000009"]


def test_an_unknown_protocol_is_a_user_error_naming_the_field():
    with pytest.raises(UserError, match=r"^spec.checkpoint.uri: cannot open nosuchproto://x"):
        CheckpointStore("nosuchproto://x")
    assert "memory" in fsspec.available_protocols()


def test_a_store_that_cannot_be_written_fails_before_training(store, tmp_path, monkeypatch):
    def refuse(path, value, **kwargs):
        raise PermissionError("403 Forbidden: AccessDenied")

    monkeypatch.setattr(store.fs, "pipe", refuse)  # as a bucket whose credentials may only read
    with pytest.raises(UserError, match=r"^spec.checkpoint.uri: cannot write to memory://.*: PermissionError: 403"):
        store.check_writable()
    CheckpointStore(f"file://{tmp_path}/fine/ckpt").check_writable()  # creates what it needs, leaves nothing
    assert (tmp_path / "fine" / "ckpt").is_dir() and not any((tmp_path / "fine" / "ckpt").iterdir())

"""The job's storage (storage/): checkpoints committed after their manifest is checked, resume that skips
what is incomplete, pruning that keeps the last good checkpoint before a stop, `final/` markers, keys that
cannot leave the root, retried transient errors; the same on a local directory and on an object store
(fsspec's in-memory filesystem, which like S3 cannot rename)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from kuberlhf.errors import UserError
from kuberlhf.storage import store as store_module
from kuberlhf.storage.checkpoints import (
    STATE_FILE,
    Checkpoints,
    begin_final,
    commit_final,
    final_committed,
    resume_point,
    set_aside,
)
from kuberlhf.storage.store import Storage, StorageError, safe_key


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "ckpt", "spec.output.dir")
    return Storage(f"memory://kuberlhf-test-{uuid.uuid4().hex}/ckpt", "spec.output.uri")


def save(checkpoints: Checkpoints, step: int, keep: int = 5, stopped: str | None = None, payload: bytes = b"w"):
    """What the workers and the driver do: begin, each part's files, commit with the manifest."""
    key = checkpoints.begin(step)
    checkpoints.storage.put_bytes(payload * 8, f"{key}/policy/weights.bin")
    checkpoints.storage.put_bytes(b"optimizer", f"{key}/policy/optim.bin")
    files = {"policy/weights.bin": 8 * len(payload), "policy/optim.bin": 9}
    return checkpoints.commit(step, files, {"sampler": {"epoch": 0, "position": step}}, keep, stopped)


def test_the_state_file_is_the_commit_and_is_written_after_the_manifest_is_checked(storage, monkeypatch):
    checkpoints = Checkpoints(storage)
    writes = []
    put = storage.put_bytes
    monkeypatch.setattr(storage, "put_bytes", lambda data, key: (writes.append(key), put(data, key)))
    saved = save(checkpoints, 3)
    assert saved.files_of("policy") == {"weights.bin": 8, "optim.bin": 9}
    assert checkpoints.newest().name == "step-00000003" and checkpoints.newest().state["sampler"]["position"] == 3
    key = checkpoints.begin(6)
    storage.put_bytes(b"half", f"{key}/policy/weights.bin")
    with pytest.raises(StorageError, match=r"checkpoint step-00000006 is incomplete, not committed: "
                                           r"policy/optim.bin is missing, policy/weights.bin has 4 bytes, not 8"):
        checkpoints.commit(6, {"policy/weights.bin": 8, "policy/optim.bin": 9}, {}, keep=5)
    assert checkpoints.newest().name == "step-00000003"


def test_resume_skips_what_is_incomplete_and_says_so(storage):
    checkpoints = Checkpoints(storage)
    for step in (3, 6, 9):
        save(checkpoints, step)
    storage.put_bytes(b"", f"step-00000009/{STATE_FILE}")  # a crash after the rename, before the data hit disk
    storage.remove("step-00000006/policy/optim.bin")
    notes = []
    assert checkpoints.newest(notes.append).name == "step-00000003"
    assert "ckpt/step-00000009: " in notes[0] and "step-00000009/trainer_state.json is not valid JSON (0 bytes" in notes[0]
    assert notes[1].endswith("step-00000006: step-00000006 is incomplete: policy/optim.bin is missing")


def test_steps_are_ordered_as_numbers_not_as_names(storage):
    checkpoints = Checkpoints(storage)
    save(checkpoints, 99_999_999)
    save(checkpoints, 123_456_789)  # a longer name, sorting before the other as a string
    assert checkpoints.newest().step == 123_456_789


def test_pruning_keeps_the_newest_and_the_last_good_one_before_a_stop(storage):
    checkpoints = Checkpoints(storage)
    for step in (2, 4, 6):
        save(checkpoints, step, keep=1)
    assert checkpoints.committed() == ["step-00000006"]
    save(checkpoints, 7, keep=1, stopped="training.maxNonFiniteSteps: steps 5-7 had a non-finite loss")
    assert checkpoints.committed() == ["step-00000006", "step-00000007"]  # step 6 is the last good policy
    assert checkpoints.newest().stopped
    save(checkpoints, 8, keep=1)
    assert checkpoints.committed() == ["step-00000008"]


def test_a_step_written_again_is_replaced_whole(storage):
    checkpoints = Checkpoints(storage)
    save(checkpoints, 4, payload=b"a")
    storage.put_bytes(b"stray", "step-00000004/policy/stray.bin")
    save(checkpoints, 4, payload=b"bb")
    assert storage.read_bytes("step-00000004/policy/weights.bin") == b"bb" * 8
    assert not storage.exists("step-00000004/policy/stray.bin")


def test_resume_point_refusals(storage, tmp_path):
    checkpoints, outputs = Checkpoints(storage), Storage(tmp_path / "out", "spec.output.dir")
    assert resume_point(checkpoints, outputs, 10, print) is None
    outputs.put_bytes(b"{}", "final/config.json")
    with pytest.raises(UserError, match=r"out/final holds the model of an earlier run"):
        resume_point(checkpoints, outputs, 10, print)
    save(checkpoints, 6)
    with pytest.raises(UserError, match=r"spec.training.steps: the newest checkpoint .* is at step 6, past the 4"):
        resume_point(checkpoints, outputs, 4, print)
    assert resume_point(checkpoints, outputs, 10, print).step == 6


def test_final_is_complete_only_with_its_marker_and_every_file(storage):
    assert not final_committed(storage)
    key = begin_final(storage)
    storage.put_bytes(b"x" * 10, f"{key}/model.safetensors")
    assert not final_committed(storage)  # written, not committed: a chained job does not start from it
    commit_final(storage, {"model.safetensors": 10}, {"step": 3})
    assert final_committed(storage)
    storage.remove("final/model.safetensors")
    assert not final_committed(storage)


def test_keys_cannot_leave_the_root(storage, tmp_path):
    for key in ("../escape", "a/../../b", "/etc/passwd", "", "a//b", "a\\b"):
        with pytest.raises(StorageError, match="not a plain relative path"):
            safe_key(key)
    save(Checkpoints(storage), 3)
    with pytest.raises(StorageError, match=r"'\.\./\.\./evil' is not a plain relative path"):
        storage.download_tree("step-00000003", {"../../evil": 1}, tmp_path / "into")  # a manifest from the store
    assert not (tmp_path / "evil").exists()


def test_transient_errors_are_retried_and_a_lasting_one_is_one_line(storage, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    source = tmp_path / "file.bin"
    source.write_bytes(b"data")
    put, failures = storage.fs.put_file, []

    def flaky(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise ConnectionError("connection reset by peer")
        return put(*args, **kwargs)

    monkeypatch.setattr(storage.fs, "put_file", flaky)
    storage.put_file(source, "a/file.bin")
    assert storage.read_bytes("a/file.bin") == b"data" and len(failures) == 2
    monkeypatch.setattr(storage.fs, "put_file", lambda *a, **k: (_ for _ in ()).throw(TimeoutError("timed out")))
    with pytest.raises(StorageError, match=r"^spec.output.(dir|uri): could not write b/file.bin in .* after 4 "
                                           r"tries: TimeoutError: timed out$"):
        storage.put_file(source, "b/file.bin")


def test_storage_that_cannot_be_opened_or_written_fails_before_training(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"^spec.output.uri: cannot open nosuchproto://x"):
        Storage("nosuchproto://x", "spec.output.uri")
    storage = Storage(f"memory://kuberlhf-test-{uuid.uuid4().hex}/x", "spec.output.uri")

    def refuse(path, value, **kwargs):
        raise PermissionError("403 Forbidden: AccessDenied")

    monkeypatch.setattr(storage.fs, "pipe_file", refuse)  # a bucket whose credentials may only read
    with pytest.raises(UserError, match=r"^spec.output.uri: cannot write to memory://.*: PermissionError: 403"):
        storage.check_writable()


def test_no_resume_sets_local_checkpoints_aside_and_refuses_an_object_store(tmp_path):
    local = Checkpoints(Storage(tmp_path / "checkpoints", "spec.output.dir"))
    assert set_aside(local) is None
    save(local, 3)
    assert set_aside(local) == str(tmp_path / "checkpoints.set-aside-1")
    assert Checkpoints(Storage(tmp_path / "checkpoints.set-aside-1", "x")).newest().step == 3
    assert local.newest() is None
    remote = Checkpoints(Storage(f"memory://kuberlhf-test-{uuid.uuid4().hex}/c", "spec.output.uri"))
    save(remote, 3)
    with pytest.raises(UserError, match=r"^spec.output.uri: memory://.* holds checkpoints .* --no-resume cannot"):
        set_aside(remote)


def test_local_json_writes_replace_the_file_whole(tmp_path):
    storage = Storage(tmp_path, "spec.output.dir")
    storage.write_json("a/state.json", {"step": 1})
    storage.write_json("a/state.json", {"step": 2})
    assert json.loads((tmp_path / "a" / "state.json").read_text()) == {"step": 2}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["state.json"]  # no temporary file left
    assert isinstance(Path(storage.root), Path) and storage.is_local

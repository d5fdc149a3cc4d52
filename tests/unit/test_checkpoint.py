"""Checkpoint directories: atomic commit, pruning, and when a run may resume or start."""

from __future__ import annotations

import pytest

from kuberlhf.errors import UserError
from kuberlhf.trainers.checkpoint import (
    commit_checkpoint,
    find_resume_point,
    newest_checkpoint,
    partial_dir,
    set_aside_checkpoints,
)


def save(directory, step: int, keep: int = 5):
    partial = partial_dir(directory, step)
    (partial / "policy.pt").write_bytes(b"weights")
    return commit_checkpoint(partial, step, {"sampler": {"epoch": 0, "position": step}, "kl_coef": 0.1}, keep)


def test_commit_renames_into_place_and_prunes_to_keep(tmp_path):
    for step in (3, 6, 9):
        save(tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000006", "step-00000009"]


def test_a_partial_checkpoint_is_never_the_newest(tmp_path):
    save(tmp_path, 3)
    crashed = partial_dir(tmp_path, 6)  # a writer died before commit
    (crashed / "policy.pt").write_bytes(b"half")
    (tmp_path / "step-00000009").mkdir()  # a directory without trainer state is not complete either
    assert newest_checkpoint(tmp_path).name == "step-00000003"


def test_fresh_start_when_nothing_exists(tmp_path):
    assert find_resume_point(tmp_path / "ckpt", tmp_path / "out", total_steps=10) is None


def test_resume_from_the_newest_complete_checkpoint(tmp_path):
    save(tmp_path / "ckpt", 3)
    save(tmp_path / "ckpt", 6)
    assert find_resume_point(tmp_path / "ckpt", tmp_path / "out", total_steps=10).name == "step-00000006"


def test_refuses_to_resume_past_the_requested_steps(tmp_path):
    save(tmp_path / "ckpt", 6)
    with pytest.raises(UserError, match=r"spec.training.steps: the newest checkpoint .* is at step 6, past the 4 steps"):
        find_resume_point(tmp_path / "ckpt", tmp_path / "out", total_steps=4)


def test_refuses_to_overwrite_a_finished_run_without_checkpoints(tmp_path):
    (tmp_path / "out" / "final").mkdir(parents=True)
    with pytest.raises(UserError, match=r"holds the model of an earlier run"):
        find_resume_point(tmp_path / "ckpt", tmp_path / "out", total_steps=4)


def test_no_resume_moves_old_checkpoints_aside_and_never_deletes_them(tmp_path):
    directory = tmp_path / "checkpoints"
    assert set_aside_checkpoints(directory) is None  # nothing there: nothing to move
    save(directory, 3, keep=2)
    first = set_aside_checkpoints(directory)
    assert first == tmp_path / "checkpoints.set-aside-1" and newest_checkpoint(first).name == "step-00000003"
    assert newest_checkpoint(directory) is None  # the run starts over
    save(directory, 5, keep=2)
    second = set_aside_checkpoints(directory)
    assert second == tmp_path / "checkpoints.set-aside-2" and (first / "step-00000003").is_dir()
    assert newest_checkpoint(second).name == "step-00000005"


def test_rewriting_a_steps_checkpoint_replaces_it_whole(tmp_path):
    save(tmp_path, 4, keep=3)
    (tmp_path / "step-00000004" / "marker").write_text("old")
    again = save(tmp_path, 4, keep=3)
    assert not (again / "marker").exists() and newest_checkpoint(tmp_path) == again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004"]  # no partial or set-aside copy left

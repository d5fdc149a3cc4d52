"""Hostile and careless job files: each gets one clear line naming the file:line or the field, never a
traceback, never megabytes of echo, never a silent guess."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberlhf.errors import UserError
from kuberlhf.jobfile import load_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def job_text(**replacements: str) -> str:
    text = (EXAMPLES / "ppo-tiny.yaml").read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def refused(tmp_path: Path, content: str | bytes, overrides: list[str] | None = None) -> str:
    path = tmp_path / "job.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError) as caught:
        load_job(path, overrides)
    return str(caught.value)


def test_binary_and_non_utf8_files_are_named_not_tracebacks(tmp_path):
    message = refused(tmp_path, job_text().encode("utf-8").replace(b"ppo", b"pp\xe9", 1))
    assert "job.yaml: not UTF-8 text (byte 0xe9 at offset" in message
    assert "not UTF-8" in refused(tmp_path, bytes(range(256)))
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        load_job(tmp_path / "dir.yaml")


def test_a_duplicate_key_names_both_lines(tmp_path):
    text = job_text(**{"spec:\n": "spec:\n  training: {steps: 5}\n"})
    message = refused(tmp_path, text)
    assert "invalid YAML: duplicate key 'training' (first at line" in message
    assert message.startswith(f"{tmp_path / 'job.yaml'}:")


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        levels.append(f"{chr(97 + level)}: &{chr(97 + level)} [" + ", ".join([f"*{chr(96 + level)}"] * 9) + "]")
    bomb = "\n".join(levels) + "\n"
    assert len(bomb) < 1000
    message = refused(tmp_path, bomb)
    assert "expands to more than 100,000 values" in message and len(message) < 300
    anchors = job_text(**{"spec:\n": "x-shared: &steps 5\nspec:\n"}).replace("steps: 3", "steps: *steps")
    assert "x-shared" in refused(tmp_path, anchors)  # aliases themselves are fine: the unknown key is the problem


def test_deep_nesting_is_an_error_not_a_recursion_crash(tmp_path):
    assert "nested more than 64 levels deep" in refused(tmp_path, "a: " + "[" * 100 + "]" * 100)
    assert "nested more than" in refused(tmp_path, "a: " + "[" * 5000 + "]" * 5000)


@pytest.mark.parametrize("setting, message", [
    ("spec.training.steps=true", "spec.training.steps: must be an integer, got True"),
    ("spec.training.learningRate=true", "spec.training.learningRate: must be a number, got True"),
    ("spec.training.learningRate=.inf", "spec.training.learningRate: Input should be a finite number"),
    ("spec.training.learningRate=.nan", "spec.training.learningRate: Input should be a finite number"),
    ("spec.output.merge_lora=1", "spec.output.merge_lora: must be true or false, got '1'"),
    ("spec.output.ephemeral='on'", "spec.output.ephemeral: must be true or false, got 'on'"),
    ("spec.output.dir=", "spec.output.dir: must be a string, got None"),
    ('spec.output.dir=""', "spec.output.dir: must not be empty"),
    ("spec.training.seed=4294967296", "spec.training.seed: must be <= 4294967295"),
    ("spec.metrics.bindAddress=localhost", "spec.metrics.bindAddress: must be an IP address such as 127.0.0.1"),
])
def test_strict_scalars(tmp_path, setting, message):
    assert message in refused(tmp_path, job_text(), [setting])


def test_numbers_written_as_strings_still_read():
    job = load_job(EXAMPLES / "ppo-tiny.yaml", ["spec.training.learningRate='1e-5'"])
    assert job.spec.training.learning_rate == 1e-5


def test_errors_echo_values_within_bounds(tmp_path):
    message = refused(tmp_path, job_text(), ["spec.algorithm=" + "x" * 1_000_000])
    assert len(message) < 1000 and "..." in message
    many = refused(tmp_path, job_text(), [f"spec.bogus{i}=1" for i in range(100)])
    assert "... and 80 more problems" in many and len(many.splitlines()) == 22


def test_control_characters_several_documents_and_merge_keys(tmp_path):
    assert "invalid YAML: character #x0000 at offset 0 is not allowed" in refused(tmp_path, b"\x00" + job_text().encode())
    assert "expected a single document in the stream" in refused(tmp_path, job_text() + "---\n" + job_text())
    merged = job_text(**{"spec:\n": "x-train: &train {steps: 2}\nspec:\n"})
    merged = merged.replace("training:\n", "training:\n    <<: *train\n", 1)
    assert "x-train: unknown field" in refused(tmp_path, merged)  # the merge itself reads; the extra key is refused

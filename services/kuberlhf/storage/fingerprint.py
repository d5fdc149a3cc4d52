"""What a checkpoint was trained with, so that a rerun never silently continues another job's training.

Each checkpoint records a fingerprint: the spec fields that change what training does (flattened to their
YAML names, e.g. `training.learningRate`), and the identity of the model and data files (size and a hash,
never a modification time, which a copy to a new pod changes). Resuming with a different fingerprint is
refused with the differences; `spec.checkpoint.resumeChanged` (`kuberlhf run --resume-changed FIELD,...`)
accepts the named ones, and the resumed run uses the new values (a new learning rate takes effect).

Not in the fingerprint, because changing them is how a run is continued or moved: `training.steps`,
evaluation and logging settings, restarts, outputs, metrics, the monitor, cluster placement and the CPUs
and GPUs of each role (the number of policy and critic workers is in: their optimizer state is sharded).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from kuberlhf.algorithms.registry import SETTINGS_BLOCKS
from kuberlhf.errors import UserError

TRAINING_SECTIONS = ("algorithm", "policy", "reference", "reward", "critic", "data", "rollout", *SETTINGS_BLOCKS,
                     "training")
NOT_TRAINING = ("training.steps", "training.evalEverySteps", "training.maxRestarts", "training.maxNonFiniteSteps",
                "training.callTimeoutSeconds", "rollout.weightSync", "data.eval", "data.evalSplit", "reward.batchSize")
SHARDED_ROLES = ("policy", "critic")
INPUT_FIELDS = ("policy.model", "reference.model", "reward.model", "critic.model", "data.train")
WHOLE_HASH_BYTES = 256 * 2**20  # files up to this size are hashed whole; larger ones by size, head and tail
SMALL_FILE_BYTES = 2**20  # in a model directory, files up to this size (config, tokenizer) are hashed


def fingerprint(spec: Any) -> dict[str, Any]:
    """{field: value} of the settings that change training, and {`inputs.<field>`: identity} of its files."""
    raw = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    if spec.algorithm is not None:  # what the algorithm's defaults resolve to, given or not
        training = raw.setdefault("training", {})
        training["kl"] = {**training.get("kl", {}), "coef": spec.kl_coef}
        training["clipRatioLow"], training["clipRatioHigh"] = spec.clip_range
        if spec.settings is not None:
            raw[spec.algorithm] = spec.settings.model_dump(by_alias=True, mode="json")
        if spec.critic_settings is not None:
            raw["critic"] = spec.critic_settings.model_dump(by_alias=True, mode="json", exclude_none=True)
    found: dict[str, Any] = {}
    for section in TRAINING_SECTIONS:
        if section in raw:
            _flatten(raw[section], section, found)
    for role in SHARDED_ROLES:
        found[f"resources.{role}.workers"] = raw["resources"][role]["workers"]
    for field in INPUT_FIELDS:
        value = found.get(field)
        if isinstance(value, str):
            found[f"inputs.{field}"] = identity(value)
    return {key: value for key, value in found.items() if not key.startswith(NOT_TRAINING)}


def _flatten(value: Any, prefix: str, into: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}", into)
    else:
        into[prefix] = value


def identity(location: str) -> str:
    """A local file's or directory's identity (sizes and hashes); anything else (a Hub id) is its own."""
    path = Path(location)
    if path.is_file():
        return f"file {path.stat().st_size} bytes, sha256 {_file_hash(path)}"
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            size = file.stat().st_size
            digest.update(f"{file.relative_to(path).as_posix()}:{size}\n".encode())
            if size <= SMALL_FILE_BYTES:
                digest.update(file.read_bytes())
        return f"directory sha256 {digest.hexdigest()[:16]}"
    return location


def _file_hash(path: Path) -> str:
    digest, size = hashlib.sha256(), path.stat().st_size
    with open(path, "rb") as handle:
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(16 * 2**20))
            handle.seek(size - 16 * 2**20)
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def changes(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (in the checkpoint, now)} of every difference."""
    keys = sorted(set(recorded) | set(current))
    return {key: (recorded.get(key), current.get(key)) for key in keys if recorded.get(key) != current.get(key)}


def accepted(field: str, allowed: list[str]) -> bool:
    """Whether `field` (or the input behind it) is named by `checkpoint.resumeChanged` (a section accepts its
    fields: `training` accepts `training.learningRate`)."""
    name = field.removeprefix("inputs.")
    return any(name == a or name.startswith(f"{a}.") for a in allowed)


def check_resume(recorded: dict[str, Any] | None, current: dict[str, Any], allowed: list[str], checkpoint: str
                 ) -> dict[str, tuple[Any, Any]]:
    """Refuse to resume `checkpoint` under changed settings that `allowed` does not name; returns the accepted
    changes (for the run to say what it applies)."""
    if recorded is None:
        raise UserError(f"spec.checkpoint: {checkpoint} records no fingerprint of the job that wrote it (an older "
                        "KubeRLHF); start over with --no-resume")
    found = changes(recorded, current)
    refused = [field for field in found if not accepted(field, allowed)]
    if refused:
        listed = "; ".join(f"{field}: {_show(found[field][0])} -> {_show(found[field][1])}" for field in refused)
        names = ",".join(dict.fromkeys(field.removeprefix("inputs.") for field in refused))
        raise UserError(f"spec.checkpoint: {checkpoint} was written by a job with other settings ({listed}); "
                        f"resuming would mix two runs. Start over with --no-resume (or another spec.output.dir), "
                        f"or accept the changes with --resume-changed {names}")
    return found


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)

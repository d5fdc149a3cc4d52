#!/usr/bin/env bash
# Build the operator image from images/operator/Dockerfile with buildah (no Docker engine, no registry):
#   images/build_operator.sh [TAG]        (default TAG: localhost/kuberlhf-operator:dev)
# Registry base images cannot be pulled on machines without registry access, so the base is assembled
# locally: a minimal Debian bookworm root (debootstrap, from Debian's package mirror) with Python and a venv
# at /opt/venv, committed as localhost/kuberlhf-python-base and passed to the Dockerfile as BASE. With
# registry access, build the Dockerfile as it is (its default BASE is python:3.12-slim-bookworm).
# Needs root (or a rootless buildah set-up), buildah and debootstrap; storage under $KUBERLHF_IMAGE_STORE
# (default /var/tmp/kuberlhf-images), vfs driver and chroot isolation, so it runs inside containers too.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-localhost/kuberlhf-operator:dev}"
store="${KUBERLHF_IMAGE_STORE:-/var/tmp/kuberlhf-images}"
base="localhost/kuberlhf-python-base:bookworm"
buildah=(buildah --root "$store/storage" --runroot "$store/run" --storage-driver vfs)
export BUILDAH_ISOLATION=chroot

if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  rootfs="$store/bookworm-rootfs"
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      http://deb.debian.org/debian >"$store/debootstrap.log" 2>&1 \
      || { tail -20 "$store/debootstrap.log" >&2; exit 1; }
    chroot "$rootfs" python3 -m venv /opt/venv
    # The build machine's CA bundle: pip in the build reaches PyPI through this machine's network (which may
    # inspect TLS with a CA of its own). Only the local stand-in base carries it.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  fi
  container="$("${buildah[@]}" from scratch)"
  "${buildah[@]}" copy --quiet "$container" "$rootfs" / >/dev/null
  "${buildah[@]}" config --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 "$container"
  "${buildah[@]}" commit --quiet "$container" "$base" >/dev/null
  "${buildah[@]}" rm "$container" >/dev/null
fi

"${buildah[@]}" bud --quiet --layers=false --build-arg "BASE=$base" -f images/operator/Dockerfile -t "$tag" . >/dev/null
echo "$tag"

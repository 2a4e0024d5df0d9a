#!/usr/bin/env bash
# Makes a Debian bookworm base image with mmdebstrap, for hosts that reach Debian's package
# mirror but no image registry, imports it into podman and prints its name, e.g.
#   make image BASE=$(configs/image/local-base.sh)
# Like debian:bookworm-slim: the minbase variant, no man pages, docs or locales. The tarball is
# cached in ~/.cache/clipgate-image/ (CLIPGATE_IMAGE_CACHE) and made again each ISO week, so the
# base picks up Debian's security updates; the image is tagged with that week.
set -euo pipefail
suite=bookworm
week=$(date -u +%GW%V)
image=localhost/clipgate-base:$suite-$week
cache=${CLIPGATE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clipgate-image}
tarball=$cache/debian-$suite-$week.tar
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}

if podman image exists "$image"; then
    echo "$image"
    exit 0
fi
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    rm -f "$cache"/debian-"$suite"-*.tar  # last week's
    echo "local-base.sh: mmdebstrap $suite into $tarball (about a minute)" >&2
    mmdebstrap --quiet --variant=minbase --format=tar \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --aptopt='Acquire::Languages "none"' \
        "$suite" "$tarball.part" \
        "deb http://deb.debian.org/debian $suite main" \
        "deb http://deb.debian.org/debian $suite-updates main" \
        "deb http://deb.debian.org/debian-security $suite-security main" >&2
    mv "$tarball.part" "$tarball"
fi
podman import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
echo "$image"

#!/usr/bin/env bash
# Builds a clipgate image with podman, from the repo root as the build context:
#   configs/image/build.sh cpu|cuda [TAG]          (make image, make image-cuda)
# Environment:
#   BASE         the Debian bookworm base image (default docker.io/library/debian:bookworm-slim;
#                with no registry: BASE=$(configs/image/local-base.sh))
#   TORCH_INDEX  passed on as the build argument of that name when set (empty: no extra index)
#   EXTRAS       passed on as the build argument of that name when set: extras of pyproject.toml
#                to install as well (EXTRAS=ray: Ray Serve, for configs/k8s/ray/)
#   PIP          the pip whose configuration (pip config list) the build mirrors (default: python3 -m pip)
#
# pip inside the build sees what the host's pip is configured with: its CA bundle, its http(s)
# indexes, and the local wheel folders it names (find-links, where a torch CPU wheel may lie). Each is
# mounted read-only into the build (podman build --volume) and named in a pip.conf mounted the
# same way; nothing of them lands in the image. When a mounted folder holds the torch wheel the
# image pins, torch's own index is left out (TORCH_INDEX=""), so the build needs no network
# beyond the package index.
set -euo pipefail
flavor=${1:?usage: build.sh cpu|cuda [TAG]}
tag=${2:-clipgate:$flavor}
root=$(cd "$(dirname "$0")/../.." && pwd)
containerfile=configs/image/Containerfile.$flavor
[ -f "$root/$containerfile" ] || { echo "build.sh: no $containerfile" >&2; exit 2; }
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/configs/image/containers.conf}
base=${BASE:-docker.io/library/debian:bookworm-slim}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The torch wheel this flavor pins, as a file name pattern: torch-2.13.0+cpu-cp311-... for cpu.
torch_version=$(sed -n 's/.*"torch==\([^"]*\)".*/\1/p' "$root/$containerfile" | head -n 1)
pip_config=$(${PIP:-python3 -m pip} config list 2>/dev/null || true)
# Prints podman arguments, one a line; writes $work/pip.conf.
python3 - "$work" "$torch_version" "$pip_config" >"$work/args" <<'PY'
import glob, os, shlex, sys
from urllib.parse import urlparse

work, torch_version, listing = sys.argv[1], sys.argv[2], sys.argv[3]
settings: dict[str, str] = {}
for line in listing.splitlines():  # e.g. global.find-links='/opt/wheels'  or  :env:.cert='...'
    key, _, value = line.partition("=")
    settings.setdefault(key.split(".", 1)[-1], " ".join(shlex.split(value)))
for key in ("cert", "find-links", "extra-index-url", "index-url"):  # the environment wins, as in pip
    value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if value:
        settings[key] = value

mount = "/run/clipgate-build"
volumes, conf, has_torch = [], {}, False
cert = settings.get("cert") or "/etc/ssl/certs/ca-certificates.crt"
if os.path.isfile(cert):
    volumes.append(f"{os.path.realpath(cert)}:{mount}/ca.crt:ro")
    conf["cert"] = f"{mount}/ca.crt"
n = 0
for key in ("find-links", "extra-index-url", "index-url"):
    kept = []
    for entry in settings.get(key, "").split():
        url = urlparse(entry)
        path = url.path if url.scheme == "file" else "" if url.scheme else entry
        if url.scheme in ("http", "https"):  # the build reaches it itself
            kept.append(entry)
        elif key == "find-links" and os.path.isdir(path):
            n += 1
            volumes.append(f"{os.path.realpath(path)}:{mount}/wheels-{n}:ro")
            kept.append(f"{mount}/wheels-{n}")
            has_torch = has_torch or bool(glob.glob(os.path.join(path, f"torch-{torch_version}-*.whl")))
        # file:// indexes are left out: their pages link to files outside the folder named.
    if kept:
        conf[key] = " ".join(kept)
with open(os.path.join(work, "pip.conf"), "w") as fh:
    fh.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
for volume in volumes:
    print(f"--volume={volume}")
print(f"--volume={work}/pip.conf:{mount}/pip.conf:ro")
print(f"--build-arg=PIP_CONFIG_FILE={mount}/pip.conf")
if has_torch and "TORCH_INDEX" not in os.environ:
    print("--build-arg=TORCH_INDEX=")
PY
mapfile -t extra <"$work/args"
if [ -n "${TORCH_INDEX+set}" ]; then
    extra+=("--build-arg=TORCH_INDEX=$TORCH_INDEX")
fi
if [ -n "${EXTRAS:-}" ]; then
    extra+=("--build-arg=EXTRAS=$EXTRAS")
fi
echo "build.sh: building $tag from $containerfile on $base" >&2
cd "$root"
previous=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
# --format docker: the OCI image format has no HEALTHCHECK.
podman build --format docker --layers --pull=missing \
    --file "$containerfile" --tag "$tag" --build-arg "BASE=$base" "${extra[@]}" .
# The image the tag named before (a GB each rebuild) goes, unless a container uses it; the
# build's cached layers stay.
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
podman image inspect --format '{{.Size}}' "$tag" | awk -v tag="$tag" '{printf "build.sh: %s is %.0f MB\n", tag, $1 / 1e6}' >&2

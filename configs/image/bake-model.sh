#!/usr/bin/env bash
# Bakes a checkpoint folder into a clipgate image, for air-gapped sites (make image-with-model):
#   configs/image/bake-model.sh MODEL_DIR [IMAGE [TAG [MODEL_ALIAS]]]
# IMAGE: the clipgate image to start from (default clipgate:cpu); TAG: default IMAGE-MODEL_NAME,
# where MODEL_NAME is the folder's name; MODEL_ALIAS: the name callers may ask for (default MODEL_NAME).
set -euo pipefail
model_dir=${1:?usage: bake-model.sh MODEL_DIR [IMAGE [TAG [MODEL_ALIAS]]]}
image=${2:-clipgate:cpu}
[ -f "$model_dir/config.json" ] || { echo "bake-model.sh: $model_dir has no config.json: not a checkpoint folder" >&2; exit 2; }
name=$(basename "$(cd "$model_dir" && pwd)")
tag=${3:-$image-$(printf '%s' "$name" | tr -c 'A-Za-z0-9_.-' '-' | cut -c 1-96)}  # a valid tag
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
echo "bake-model.sh: $model_dir -> /models/$name in $tag" >&2
podman build --format docker --pull=never --file "$here/Containerfile.with-model" --tag "$tag" \
    --build-arg "IMAGE=$image" --build-arg "MODEL_NAME=$name" --build-arg "MODEL_ALIAS=${4:-}" "$model_dir"

# The README's two commands, `make serve` and `make test`, do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
ARGS ?=

.PHONY: install serve serve-ray check test bench bench-ray soak clean image image-cuda image-with-model test-image

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[test,onnx,openvino,ray]'
	touch $(STAMP)

install: $(STAMP) $(CHROMIUM)

# The docs page test drives Debian's Chromium, never a downloaded browser build: installed here,
# once, when it is missing and we are root; otherwise that test fails and says what to install.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 chromium \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 chromium; }; \
	else echo "note: $(CHROMIUM) is missing and is installed only as root (apt-get install chromium)"; fi

serve: $(STAMP)
	$(BIN)/clipgate serve --config configs/default.toml $(ARGS)

# clipgate on Ray Serve (clipgate.ray): two whole-gateway replicas on Ray's HTTP port, 127.0.0.1:8000.
# Starts a local Ray cluster, or deploys onto the one RAY_ADDRESS names. Builder arguments go in
# ARGS as key=value: make serve-ray ARGS="model=random:tiny mode=split batching.max_batch_images=16".
serve-ray: $(STAMP)
	$(BIN)/serve run clipgate.ray:build config=configs/default.toml replicas=2 $(ARGS)

check: $(STAMP)
	$(BIN)/ruff format --check --quiet clipgate adapters tests
	$(BIN)/ruff check --quiet clipgate adapters tests
	$(BIN)/mypy clipgate adapters

# tests/image/ builds the CPU image and runs it with podman: about 7 minutes the first time on
# 2 cores, under a minute when nothing changed (see make test-image).
test: check $(CHROMIUM)
	$(BIN)/python -m pytest $(ARGS)

# The benchmark: bare model, clipgate and a naive server side by side on random:base (~5 min on
# 2 cores; it starts no round that could take it past 9). ARGS="--device cuda" on a GPU; figures
# go to bench-results.json.
bench: $(STAMP)
	$(BIN)/python -m clipgate.bench --out bench-results.json $(ARGS)

# clipgate on Ray Serve beside plain clipgate serve, in one run (~5 min on 2 cores): one whole-gateway
# replica, two of one thread each, and split mode; images/s and short texts/s at 16 clients, p50 at
# concurrency 1. Needs the ray extra (make install has it); figures go to bench-ray-results.json.
bench-ray: $(STAMP)
	$(BIN)/python -m clipgate.bench.on_ray --out bench-ray-results.json $(ARGS)

# Twice the measured capacity for 3 minutes with hostile requests mixed in; fails on a 5xx other
# than 503, a request left unanswered, or resident memory growing past its bound.
soak: $(STAMP)
	$(BIN)/python -m clipgate.bench.soak --out soak-results.json $(ARGS)

# Container images (configs/image/, built with podman). BASE: the Debian bookworm image they start
# from; with no registry, BASE=$$(configs/image/local-base.sh) makes one with mmdebstrap. The build
# uses the host's pip configuration (CA bundle, local wheel folders): see configs/image/build.sh.
BASE ?= docker.io/library/debian:bookworm-slim
# EXTRAS: extras of pyproject.toml the image installs too, e.g. make image-cuda EXTRAS=ray (Ray Serve,
# for configs/k8s/ray/); empty: none.
EXTRAS ?=
IMAGE ?= clipgate:cpu
PIP_OF_HOST = $$(test -x $(BIN)/pip && echo $(BIN)/pip)

image:
	BASE=$(BASE) EXTRAS=$(EXTRAS) PIP=$(PIP_OF_HOST) configs/image/build.sh cpu clipgate:cpu

# Several GB (torch's CUDA 13.0 build and its CUDA libraries): built on demand only.
image-cuda:
	BASE=$(BASE) EXTRAS=$(EXTRAS) PIP=$(PIP_OF_HOST) configs/image/build.sh cuda clipgate:cuda

# make image-with-model MODEL_DIR=/path/to/checkpoint [MODEL_ALIAS=ViT-B-32] [IMAGE=clipgate:cuda] [TAG=...]
image-with-model:
	@test -n "$(MODEL_DIR)" || { echo "usage: make image-with-model MODEL_DIR=/path/to/checkpoint [MODEL_ALIAS=...] [IMAGE=$(IMAGE)] [TAG=...]" >&2; exit 2; }
	configs/image/bake-model.sh "$(MODEL_DIR)" "$(IMAGE)" "$(TAG)" "$(MODEL_ALIAS)"

# The image part of make test alone: tests/image/ builds the CPU image on a Debian base made
# locally (no registry needed), installing podman and mmdebstrap when missing, and drives it.
test-image: $(STAMP)
	$(BIN)/python -m pytest tests/image $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

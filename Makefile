# The README's two commands, `make serve` and `make test`, do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
ARGS ?=

.PHONY: install serve check test bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[test,onnx,openvino]'
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

check: $(STAMP)
	$(BIN)/ruff format --check --quiet clipgate adapters tests
	$(BIN)/ruff check --quiet clipgate adapters tests
	$(BIN)/mypy clipgate adapters

test: check $(CHROMIUM)
	$(BIN)/python -m pytest $(ARGS)

# The benchmark: bare model, clipgate and a naive server side by side on random:base (~5 min on
# 2 cores; it starts no round that could take it past 9). ARGS="--device cuda" on a GPU; figures
# go to bench-results.json.
bench: $(STAMP)
	$(BIN)/python -m clipgate.bench --out bench-results.json $(ARGS)

# Twice the measured capacity for 3 minutes with hostile requests mixed in; fails on a 5xx other
# than 503, a request left unanswered, or resident memory growing past its bound.
soak: $(STAMP)
	$(BIN)/python -m clipgate.bench.soak --out soak-results.json $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

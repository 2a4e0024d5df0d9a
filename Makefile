# The README's two commands, `make serve` and `make test`, do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install serve check test bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/clipgate serve --config configs/default.toml $(ARGS)

check: $(STAMP)
	$(BIN)/ruff format --check --quiet clipgate adapters tests
	$(BIN)/ruff check --quiet clipgate adapters tests
	$(BIN)/mypy clipgate adapters

test: check
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

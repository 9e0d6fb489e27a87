# churnflow: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MPLBACKEND := Agg

.PHONY: demo test install bench docs clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Generate the demo book and run the whole pipeline end to end on the embedded default.
demo: $(STAMP)
	$(BIN)/churnflow demo

## Run the whole test suite (unit, data, model, CRM, end-to-end on Prefect, PostgreSQL).
test: $(STAMP) chromium
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --nbmake --durations=15 tests notebooks

## Headless Chromium for the digest's rendered check (Debian package; skipped if apt is unavailable).
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the rendered digest check will be skipped"; }

docs: $(STAMP)
	$(BIN)/churnflow docs

clean:
	rm -rf .churnflow

# Two entry points: `make run` and `make test` (see README.md); CI runs `.ci/run` = `make test`.
# `make test-fast` is the inner loop: the suite without the tests marked slow, no lint, no apt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= conf/sipdht.ini
APT_PEERS := dhtnode python3-opendht sip-tester baresip sipsak coturn iptables conntrack iproute2 procps
PYTEST_ARGS ?=
BENCH_ARGS ?= --quick

.PHONY: run test test-fast test-peers venv lint clean bench

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/sipdht run --config $(CONFIG)

# Installs the real peers the tests talk to (needs root, as on CI).
test-peers:
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get -o DPkg::Lock::Timeout=600 update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
	    --no-install-recommends $(APT_PEERS); \
	else echo "not root: skipping apt install of $(APT_PEERS)"; fi

# Lint first, then the suite. pytest's exit code is also written to $SIPDHT_PYTEST_RC_FILE when
# set, because make itself reports any failure as 2 (.ci/run exits with pytest's own code).
test: lint test-peers
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ -n "$$SIPDHT_PYTEST_RC_FILE" ]; then echo $$rc > "$$SIPDHT_PYTEST_RC_FILE"; fi; \
	exit $$rc

# Everything not marked slow (setup.cfg); CI still runs the whole suite through `make test`.
test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff on everything, mypy on the package (settings in pyproject.toml), the layer contracts
# (setup.cfg [importlinter]) and no import cycles.
lint: venv
	$(VENV)/bin/ruff check sipdht tests bench plugins tools
	$(VENV)/bin/mypy sipdht
	$(VENV)/bin/lint-imports --no-cache --no-logo setup.cfg
	$(PY) tools/import_cycles.py sipdht

# Every benchmark in bench/ against its peer in the same run, one table (not part of `make test`).
# BENCH_ARGS= (empty) runs the scripts' own defaults; namespace benchmarks need root.
bench: venv
	$(PY) bench/all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

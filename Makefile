# Two entry points: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= conf/sipdht.ini
APT_PEERS := dhtnode python3-opendht sip-tester baresip sipsak coturn iptables conntrack iproute2 procps
PYTEST_ARGS ?=

.PHONY: run test test-peers venv lint clean

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

test: test-peers venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check sipdht tests bench plugins

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

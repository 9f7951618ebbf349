# famfs-agent: `make demo`, `make test` and `make test-quick` work on a fresh Debian machine; they install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config libyaml-dev python3-venv systemd rsync tar fio build-essential python3-dev
# and Debian's kubernetes-client when no kubectl is on PATH (tests render deploy/kubernetes with it)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps install bytecode demo churn test test-quick bench bench-quick clean

deps: $(VENV)/.deps
$(VENV)/.deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done; \
		command -v kubectl >/dev/null || echo kubernetes-client); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@[ -e /dev/fuse ] || { echo "no /dev/fuse: FUSE is not available on this machine"; exit 1; }
	python3 -m venv $(VENV)
	@mkdir -p $(VENV) && touch $@

install: $(VENV)/.installed
$(VENV)/.installed: $(VENV)/.deps pyproject.toml setup.py famfs/_cacheline.c
	$(PY) -m pip install -q --upgrade pip
	@# setuptools prints a page-long notice on every editable install ("Editable installation ..."): not ours to act on
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install -q -e '.[test,arrow]'
	@touch $@

# Compiled as pip compiles an installed wheel: an editable install is not, and where
# PYTHONDONTWRITEBYTECODE is set (containers, CI) every program start would compile our modules
# again (about 60 ms of a client's cold start). Only changed files are compiled.
bytecode: install
	@$(PY) -m compileall -q famfs agent fusefs famfs_fuse_mount >/dev/null

demo: bytecode
	$(PY) -m demo

# A master and two clients churning one small image (docs/reclaim.md, "Running it"): <= 3 minutes.
# ARGS=--long for hours, ARGS=--json for the report as JSON.
churn: bytecode
	$(PY) -m demo.forever $(ARGS)

test: bytecode
	$(PY) -m pytest -q

# The quick tier (tests/conftest.py, QUICK_MODULES): in-process only, a minute at most.
test-quick: bytecode
	$(PY) -m pytest -q -m quick

bench: bytecode
	$(PY) -m bench

bench-quick: bytecode
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache famfs/_cacheline*.so

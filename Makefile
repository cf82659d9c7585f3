# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv idempotently.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned here, not in setup.py: this machine has the CPU 2.13.0 wheel on disk, while GPU
# users install the CUDA build they need.
TORCH  := torch==2.13.0
DEMO_OUT ?= demo_output

.PHONY: all setup test demo bench clean
all: setup

$(STAMP): setup.py requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q test

demo: setup
	$(BIN)/python -m superseg_ros.demo --output $(DEMO_OUT)

bench: setup
	$(BIN)/superseg-bench

clean:
	rm -rf $(DEMO_OUT) build install log .pytest_cache

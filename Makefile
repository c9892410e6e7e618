# ggufkit developer entry points. Everything installs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
GGUFKIT := $(VENV)/bin/ggufkit
PYTEST_ARGS ?=

.PHONY: install build test test-fast lint format bench bench-portable demo fuzz clean

# torch is pinned (a CPU build installs from disk here); installing it first keeps any
# dependency from pulling another torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[torch,bnb,ray,dev]"
	# FastChat's apply_delta/make_delta, the anchor of the delta tests and benchmark; without
	# --no-deps it would pull a web server's dependencies.
	$(PIP) install -q --no-deps "fschat==0.2.36"
	touch $@

install: $(VENV)/.installed

# The pinned llama.cpp, built once into $$GGUFKIT_HOME (default: the user cache dir), and the
# llama-cpp-python bindings installed against it without a second compile.
build: install
	GGUFKIT_NO_PROGRESS=1 $(GGUFKIT) build

test: build
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Unit tests only: no llama.cpp build, no slow tests.
test-fast: install
	$(VENV)/bin/pytest -m "not needs_llamacpp and not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: build
	$(PY) benchmarks/run_all.py

# Opt-in: two cold llama.cpp builds (native and --portable), 25 minutes or more on 2 cores.
bench-portable: build
	$(PY) benchmarks/portable_build.py

demo: build
	$(GGUFKIT) demo

fuzz: install
	GGUFKIT_FUZZ_EXAMPLES=20000 $(VENV)/bin/pytest tests/test_fuzz.py -p no:cacheprovider

clean:
	rm -rf $(VENV) vendor .pytest_cache .mypy_cache .ruff_cache

# ggufkit developer entry points. Everything installs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install build test test-fast lint format bench bench-portable demo fuzz clean

# The set-up itself lives in tools/dev.py (`python tools/dev.py`, outside the package), the same
# on every OS;
# these targets are POSIX conveniences that call it. It installs torch pinned and first, then
# ggufkit with its extras, then FastChat without its dependencies.
DEV := GGUFKIT_VENV=$(VENV) $(PYTHON) tools/dev.py

install:
	$(DEV) install

# The pinned llama.cpp, built once into $$GGUFKIT_HOME (default: the user cache dir), and the
# llama-cpp-python bindings installed against it without a second compile.
build:
	$(DEV) build

test:
	$(DEV) test $(PYTEST_ARGS)

# Unit tests only: no llama.cpp build, no slow tests.
test-fast:
	$(DEV) test-fast $(PYTEST_ARGS)

# ruff, ruff format, mypy, and the CI workflow offline (check-jsonschema, zizmor).
lint:
	$(DEV) lint

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# BENCH_ARGS=--with-7b adds the LLaMA-7B-shaped convert benchmark (~30 GB of disk).
BENCH_ARGS ?=
bench: build
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# Opt-in: two cold llama.cpp builds (native and --portable), 25 minutes or more on 2 cores.
bench-portable: build
	$(PY) benchmarks/portable_build.py

demo:
	$(DEV) demo

fuzz: install
	GGUFKIT_FUZZ_EXAMPLES=20000 $(VENV)/bin/pytest tests/test_fuzz.py -p no:cacheprovider

clean:
	rm -rf $(VENV) vendor/llama.cpp .pytest_cache .mypy_cache .ruff_cache

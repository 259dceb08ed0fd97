# metersync — the two quick-start commands are `make demo` and `make test`.
# Each creates (or reuses) a virtual environment in .venv, installs what it needs, then runs.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
STAMP   = $(VENV)/.installed-$(1)

.PHONY: demo test test-c test-python bench stress lint install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel "Cython>=3.0"

SOURCES = pyproject.toml setup.py $(shell find src -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.pxi')

# Reinstall when the sources change: the Cython extension is built by `pip install`.
# Each target installs the extra it needs (pyproject.toml): `demo` the embedded PostgreSQL and
# the reference Client System, `test` that plus pytest & co, `bench` that plus the peers.
$(VENV)/.installed-demo: $(VENV)/bin/python $(SOURCES)
	$(PIP) install -e ".[demo]"
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python $(SOURCES)
	$(PIP) install -e ".[test]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PIP) install -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed-test

demo: $(VENV)/.installed-demo
	$(VENV)/bin/metersync demo

# What CI runs (.ci/run). The suite runs ONCE, on the compiled core (METERSYNC_IMPL unset: best
# available, and the header line says which). Both implementations are still covered: the codec
# tests (tests/codec, the `impl`/`c_impl`/`py_impl` fixtures of tests/fix_arrow.py) run each
# case against both twins and compare their bytes. `make test-c` / `make test-python` run the
# whole suite on one implementation, strictly (an unavailable one is an error, not a fallback).
test: $(VENV)/.installed-test
	$(PY) -c "import metersync, sys; print('metersync', metersync.__version__, 'impl', metersync.__impl__)"
	$(PY) -m pytest -q

test-c: $(VENV)/.installed-test
	METERSYNC_IMPL=c $(PY) -c "import metersync; assert metersync.__impl__ == 'c'; print('impl c')"
	METERSYNC_IMPL=c $(PY) -m pytest -q

test-python: $(VENV)/.installed-test
	METERSYNC_IMPL=python $(PY) -c "import metersync; assert metersync.__impl__ == 'python'; print('impl python')"
	METERSYNC_IMPL=python $(PY) -m pytest -q

stress: $(VENV)/.installed-test
	$(PY) -m pytest -q -m stress --run-stress tests/reliability

# The suite has its own pytest config (benchmarks/pytest.ini) so `make test` never collects it.
bench: $(VENV)/.installed-bench
	mkdir -p bench-results
	$(PY) -m pytest -c benchmarks/pytest.ini -q benchmarks --benchmark-only --benchmark-json=bench-results/benchmarks.json --benchmark-columns=min,median,mean,rounds
	$(PY) benchmarks/rss.py --readings 100000 --json bench-results/rss.json
	$(PY) benchmarks/summarize.py bench-results/benchmarks.json --rss bench-results/rss.json

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf build dist src/*.egg-info src/metersync/codec/*.c src/metersync/codec/*.so src/metersync/store/*.c src/metersync/store/*.so .pytest_cache .hypothesis

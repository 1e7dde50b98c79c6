# Two commands on a fresh machine: `make demo` and `make test`.
# Both build .venv on first use and install atomlimit with what it needs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready
BENCH_READY := $(VENV)/.bench-ready
DOCS_READY := $(VENV)/.docs-ready

.PHONY: demo test pytest lint typecheck docs bench clean

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The peers and plotting live in the bench extra, kept out of dev so that
# `make test` never installs them.
$(BENCH_READY): $(READY) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

# MkDocs and its plugins are a dependency group (pyproject.toml), kept out
# of every extra: nobody who installs atomlimit needs them.
$(DOCS_READY): $(READY) pyproject.toml
	$(BIN)/python -m pip install --quiet --group docs
	touch $@

demo: $(READY)
	$(BIN)/atomlimit demo

# The suite starts its own Redis and Valkey servers on free loopback ports;
# requiring both makes a missing server fail the run instead of shrinking it.
test: lint typecheck docs pytest

pytest: $(READY)
	ATOMLIMIT_REQUIRE_SERVERS=redis,valkey $(BIN)/python -m pytest -q --hypothesis-profile=ci

lint: $(READY)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(READY)
	$(BIN)/mypy

# Strict: a broken link, a page missing from the navigation, or an API
# reference that no longer resolves fails the build.
docs: $(DOCS_READY)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Compares atomlimit with its peers on a throwaway redis-server; pass options
# through, e.g. `make bench BENCH_ARGS=--quick`.
bench: $(BENCH_READY)
	$(BIN)/python bench/peers.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build site

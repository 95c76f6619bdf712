# `make demo` and `make test` set themselves up: they create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: setup demo test test-slow test-readme mutation bench clean

setup: $(STAMP)

# Torch first, pinned to the CPU wheel on disk, so that no loose requirement pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dmc,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out demo_out

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-readme: $(STAMP)
	$(PY) -m pytest -q -m readme

mutation: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/mutation_testing.py --sample 15

bench: $(STAMP)
	$(PY) benchmarks/env_speed.py

clean:
	rm -rf $(VENV) demo_out

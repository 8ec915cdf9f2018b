# The README's two set-up commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# every install step is pinned (constraints.txt). On Linux, pip takes the pinned torch from PyPI,
# which is the CUDA build: it brings triton and the nvidia-* libraries (several GB), right for a GPU
# machine, dead weight on a CPU-only one. TORCH_INDEX points the torch step (only that step) at
# another wheel index, e.g. PyTorch's CPU-only wheels, on a fresh .venv (or after `make clean`):
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PIP := $(BIN)/pip install --constraint constraints.txt
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: install demo test bench downstream lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0 $(TORCH_FROM)
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/onepeace demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_train.py

downstream: install
	$(BIN)/python benchmarks/downstream.py

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

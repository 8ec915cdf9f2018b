# The README's two set-up commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# every install step is pinned: an unpinned torch pulls a multi-GB CUDA build
PIP := $(BIN)/pip install --constraint constraints.txt

.PHONY: install demo test bench downstream lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
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

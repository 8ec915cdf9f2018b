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

.PHONY: install demo demo-seeds test bench bench-index bench-search bench-serve screenshot downstream lint clean

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

# indexing throughput vs model.embed, peak RSS while indexing, the demo's audio->image search
# (needs `make demo` first for the last): benchmarks/results/index.json
bench-index: install
	$(BIN)/python benchmarks/bench_index.py

# search latency p50/p95 (exact and ANN) and ANN recall@10 at 10k, 100k and 1M synthetic rows:
# benchmarks/results/search.json
bench-search: install
	$(BIN)/python benchmarks/bench_search.py

# onepeace serve under 16 concurrent clients, micro-batched vs one at a time: benchmarks/results/serve.json
bench-serve: install
	$(BIN)/python benchmarks/bench_serve.py

# docs/serve.png: the search page on the demo index (run `make demo` first); look at it before committing
screenshot: install
	$(BIN)/python scripts/serve_screenshot.py --index runs/demo/index --out docs/serve.png

# the full demo for seeds 0..4 (about 5x the demo's time): benchmarks/results/demo-seeds.json
demo-seeds: install
	$(BIN)/python benchmarks/demo_seeds.py

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

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

.PHONY: parity install demo demo-video demo-adapt demo-adapt-seeds bench-adapt demo-seeds demo-ablation test test-fast bench bench-peak bench-load bench-index bench-search bench-serve bench-serve-load bench-storage bench-padding bench-video bench-moments bench-int8 bench-onnx screenshot downstream lint clean check-extras gpu-check docs tables mteb hear-validate bench-harness

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0 $(TORCH_FROM)
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/onepeace demo

# after `make demo`: align a video branch to runs/demo/model on generated digit clips (runs/demo-video).
# One thread, as the README's figures were measured: the thread count changes the order of the float
# sums and with it the figures, and on a machine busy with other jobs one thread is many times faster
# than torch's default of one per core. `make demo-video VIDEO_THREADS=4` uses four.
VIDEO_THREADS ?= 1
demo-video: install
	OMP_NUM_THREADS=$(VIDEO_THREADS) $(BIN)/onepeace demo-video

# after `make demo`: adapt runs/demo/model to real recorded speech (the Free Spoken Digit Dataset, bundled)
# with LoRA, two speakers held out; zero-shot accuracy on them and the demo's own retrieval before and
# after: runs/demo-adapt/metrics.json (a few minutes on 2 cores; no network)
demo-adapt: install
	$(BIN)/onepeace demo-adapt

test: install
	$(BIN)/python -m pytest

# everything but the tests marked slow (training runs, demos, Ray, torch.compile), browser
# (headless Chromium) and distributed (torchrun / gloo processes): a few minutes on 2 cores
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser and not distributed"

# each extra alone: the core plus ONE extra ([search], [serve], [video], [export], [scale]; the core
# alone for training) in a fresh venv each, its command run once (about 10 min; pip's cache reused;
# TORCH_INDEX as for install). CI runs it after `make test`.
check-extras: $(BIN)/python
	$(BIN)/python scripts/check_extras.py $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))

# on a CUDA machine (< 8 min on one H100): parity in fp32 and bf16 against CPU fp32, base and 4B
# throughput, a serve smoke test: benchmarks/results/gpu-check.json. Without CUDA: one line, exit 0
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

# fp32 parity with the official outputs on this CPU (pytest -m official_fixtures): benchmarks/results/parity.json
parity: install
	$(BIN)/python benchmarks/parity.py

bench: install
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_train.py

downstream: install
	$(BIN)/python benchmarks/downstream.py

# % of the matmul peak and speed-up over the upstream-style forward, fp32 and bf16: benchmarks/results/peak.json
bench-peak: install
	$(BIN)/python benchmarks/bench_peak.py

# process start -> first embedding and peak RSS, demo model and base weights: benchmarks/results/load.json
bench-load: install
	$(BIN)/python benchmarks/bench_load.py

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

# Locust, headless, on 127.0.0.1: mixed text/image/search traffic at 16 and 64 users (30 s or 20,000
# requests each): req/s, p50/p95/p99, error rate, RSS after a burst: benchmarks/results/serve-load.json.
# SOAK=600 adds a 10-minute soak reporting RSS at its start and end. Then a 5-s burst of 64 users against
# --max-queue 8 --max-in-flight 32: the share of 503s and the time to recover (--burst-only: just that).
bench-serve-load: install
	$(BIN)/python benchmarks/bench_serve_load.py $(if $(SOAK),--soak $(SOAK))

# an index on object storage (moto's S3 server on 127.0.0.1) against a local directory: write rate,
# open, first and p50/p95 exact query latency (10,000 rows of 512): benchmarks/results/storage.json
bench-storage: install
	$(BIN)/python benchmarks/bench_storage.py

# variable-length batches (audio 1-15 s, text 3-70 tokens): one padded batch the official way vs
# model.embed's bucketing/packing, base width, fp32 and bf16 (a few minutes): benchmarks/results/padding.json
bench-padding: install
	$(BIN)/python benchmarks/bench_padding.py

# video embedding at base width: clips/s and peak memory at 8 and 16 frames, frames-as-images and
# pool=1 alongside, PyAV decode time: benchmarks/results/video.json
bench-video: install
	$(BIN)/python benchmarks/bench_video.py

# moments in long media with known answers (after `make demo` and `make demo-video`): recall@1 and offset
# errors of text -> audio and text -> video moments per window setting against the whole file, indexing
# 1 h of audio and of video (hours per CPU-hour, peak RSS), moment search latency over 100 h of windows, on
# one thread (about 30-60 min on 2 busy cores): benchmarks/results/moments.json (`--parts audio` reruns one part)
bench-moments: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_moments.py

# int8 vs our fp32 and bf16 (base width, one run; cosine on ../shared/data with the demo model if
# present), the matmul peaks measured alongside, a profile: benchmarks/results/int8.json
bench-int8: install
	$(BIN)/python benchmarks/bench_int8.py

# the exported ONNX graphs on onnxruntime next to our PyTorch fp32 and bf16: benchmarks/results/onnx.json
bench-onnx: install
	$(BIN)/python benchmarks/bench_onnx.py

# docs/serve.png: the search page on the demo index (run `make demo` first); look at it before committing
screenshot: install
	$(BIN)/python scripts/serve_screenshot.py --index runs/demo/index --out docs/serve.png

# `make demo-adapt` for seeds 0, 1, 2 (after `make demo`): benchmarks/results/demo-adapt.json
demo-adapt-seeds: install
	$(BIN)/python benchmarks/demo_adapt_seeds.py

# one adapt step of tiny, base and the 4B preset (bf16, activation checkpointing, batch 8: seconds,
# peak RSS) and LoRA against full fine-tuning on the demo-adapt task: benchmarks/results/adapt.json
bench-adapt: install
	$(BIN)/python benchmarks/bench_adapt.py

# the full demo for seeds 0..4 (about 5x the demo's time): benchmarks/results/demo-seeds.json
demo-seeds: install
	$(BIN)/python benchmarks/demo_seeds.py

# the demo as shipped, --plain and --extra-voices --augment --plain, seeds 0..2 (about 8x the demo's
# time; the default arm reuses `make demo-seeds` when it ran first): benchmarks/results/demo-ablation.json
demo-ablation: install
	$(BIN)/python benchmarks/demo_seeds.py --ablation --seeds 0 1 2 --default-from runs/demo-seeds

# the documentation site (docs/, mkdocs.yml): build/site/, built strict (a broken link, a page left out of
# the navigation or an unreadable docstring fails it); tests/test_docs_site.py runs the same build
docs: install
	$(BIN)/mkdocs build --strict

# score a model with MTEB (docs/harnesses.md), offline from the Hugging Face cache, into MTEB's
# standard results folder: make mteb MTEB_MODEL=runs/demo/model MTEB_BENCHMARK="MAEB(v1)"
# (or MTEB_TASKS=A,B; MTEB_ESC10=../shared/data/esc10 adds the local ESC-10 zero-shot task,
# MTEB_COCO=../shared/data/coco-mini the local COCO image-text retrieval tasks)
MTEB_MODEL ?= runs/demo/model
MTEB_BENCHMARK ?=
MTEB_TASKS ?=
MTEB_ESC10 ?=
MTEB_COCO ?=
MTEB_OUTPUT ?= results
mteb: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m onepeace.integrations.mteb --model $(MTEB_MODEL) \
		$(if $(MTEB_BENCHMARK),--benchmark "$(MTEB_BENCHMARK)") $(if $(MTEB_TASKS),--tasks "$(MTEB_TASKS)") \
		$(if $(MTEB_ESC10),--esc10 "$(MTEB_ESC10)") $(if $(MTEB_COCO),--coco "$(MTEB_COCO)") --output $(MTEB_OUTPUT)

# the HEAR submission validator on onepeace.hear (it pulls TensorFlow: a venv of its own under
# build/, the project's installed into it with --constraint): make hear-validate HEAR_MODEL=runs/demo/model
# hearvalidator 2021.0.6 (the last) declares Python < 3.9 and a dependency on the full `tensorflow`:
# it is installed without its declared requirements, beside tensorflow-cpu (it only imports tensorflow)
HEAR_MODEL ?= runs/demo/model
HEAR_DEVICE ?= cpu
HEAR_VENV := build/hear-venv
hear-validate:
	test -x $(HEAR_VENV)/bin/python || $(PYTHON) -m venv $(HEAR_VENV)
	$(HEAR_VENV)/bin/pip install --constraint constraints.txt torch==2.13.0 $(TORCH_FROM)
	$(HEAR_VENV)/bin/pip install --constraint constraints.txt -e . tensorflow-cpu
	$(HEAR_VENV)/bin/pip install --no-deps --ignore-requires-python hearvalidator==2021.0.6
	$(HEAR_VENV)/bin/hear-validator onepeace.hear --model $(HEAR_MODEL) --device $(HEAR_DEVICE)

# the harnesses on the demo model (needs `make demo` and ../shared/data/esc10): benchmarks/results/harness.json
bench-harness: install
	$(BIN)/python benchmarks/bench_harness.py

# the tables of figures in README.md and docs/*.md, rewritten from benchmarks/results/*.json
# (tests/test_tables.py fails when a table and its JSON disagree)
tables: install
	$(BIN)/python scripts/gen_tables.py

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

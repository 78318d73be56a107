# The companion's commands. `make` alone lists them.
#   make book                         set up, run every chapter (preset default), build HTML
#   make test                         set up, run the tests (chapters run with preset tiny)
#   make chapter CH=01 PRESET=tiny ARGS='-p train_steps 50'

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PRESET ?= default
CH ?=
ARGS ?=
PYTHON3 ?= python3
# Installed first: the CPU wheel on the machine. Any other torch pulls GBs of CUDA wheels.
TORCH := torch==2.13.0

# Every path from the Makefile's own folder: `make -f path/to/Makefile test` works from anywhere.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
REQ_STAMP := $(VENV)/.requirements.stamp
CACHE := $(or $(COMPANION_CACHE),$(ROOT)/.cache)
SETUP_STAMP := $(CACHE)/setup.stamp
PIP := $(PY) -m pip --disable-pip-version-check --quiet

export PYTHONPATH := $(ROOT)
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help setup book chapter student test bench-book bench bench-scores bench-prune bench-features clean distclean

help: ## list the targets
	@echo "usage: make TARGET [PRESET=default|tiny|paper-...] [CH=01] [ARGS='-p NAME VALUE']"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

setup: $(SETUP_STAMP) ## create .venv, install the pinned packages, prepare models and data

$(PY):
	@echo "creating $(VENV) ..."
	$(PYTHON3) -m venv $(VENV)

$(REQ_STAMP): $(ROOT)/requirements.txt | $(PY)
	@echo "installing packages into $(VENV) (first time: a few minutes) ..."
	$(PIP) install $(TORCH)
	$(PIP) install -r $(ROOT)/requirements.txt
	@touch $@

$(SETUP_STAMP): $(REQ_STAMP) $(wildcard $(ROOT)/lib/*.py $(ROOT)/lib/*/*.py)
	$(PY) -m lib.setup

book: setup ## run every chapter with PRESET, then build _build/PRESET/html
	$(PY) -m lib.book all --preset $(PRESET) $(ARGS)

chapter: setup ## re-run one chapter: CH=01 PRESET=tiny ARGS='-p train_steps 50'
	$(PY) -m lib.book run --preset $(PRESET) $(if $(CH),--chapter $(CH)) $(ARGS)

student: setup ## the chapters without solutions or outputs, for a class: _build/student/book/
	$(PY) -m lib.book student

test: setup ## run the tests (all chapters with preset tiny, then the book build)
	cd "$(ROOT)" && $(PY) -m pytest -q $(ARGS)

bench-book: setup ## where the last full book run's time went, stage by stage (from results/)
	$(PY) -m lib.report --time --preset $(PRESET)

# Each benchmark also writes its figures to results/bench/ (the CPU page renders them).
bench: setup ## training and decoding speed and memory (scripts/benchmark.py)
	$(PY) $(ROOT)/scripts/benchmark.py --json $(ROOT)/results/bench/train.json $(ARGS)

bench-scores: setup ## cost of redundancy scoring (scripts/benchmark_scores.py, ~6 min)
	$(PY) $(ROOT)/scripts/benchmark_scores.py --json $(ROOT)/results/bench/scores.json $(ARGS)

bench-prune: setup ## pruned vs full decoding speed and memory (scripts/benchmark_prune.py)
	$(PY) $(ROOT)/scripts/benchmark_prune.py --json $(ROOT)/results/bench/prune.json $(ARGS)

bench-features: setup ## peak memory of the feature stage against the number of clips (~10 s)
	$(PY) $(ROOT)/scripts/benchmark_features.py --json $(ROOT)/results/bench/features.json $(ARGS)

clean: ## remove _build (keeps the cache and .venv)
	rm -rf $(ROOT)/_build

distclean: clean ## also remove the cache (.cache) and .venv
	rm -rf $(ROOT)/.cache $(VENV)

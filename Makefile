# The README's two commands:
#   make pipeline   set up .venv and run the whole pipeline on the built-in data (CPU is fine)
#   make test       set up .venv and run the tests (all but those marked gpu)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Prefect's state stays inside the repo; no telemetry on offline machines.
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
EXPERIMENT ?=
PORT ?= 4200
# the CPU build of torch to install when there is no GPU (a wheel on local disk or a CPU index)
TORCH_CPU ?= torch==2.13.0

.PHONY: pipeline test setup serve mlflow-ui bench clean report scaling rlhf-seeds gpt1-seeds rank ranking-screenshot

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch unless a GPU is present (a plain `torch` pulls a multi-GB CUDA build)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q 'torch>=2.3,<2.15'; \
	else \
	  $(PY) -m pip install -q $(TORCH_CPU); \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

pipeline: setup
	$(PY) -m flows.pipeline $(if $(EXPERIMENT),experiment=$(EXPERIMENT))
	$(PY) -m tasks.report

# The scaling experiment (not part of `make pipeline`): docs/scaling.md and docs/scaling.png
scaling: setup
	$(PY) -m flows.scaling

# The RLHF methods again with more seeds (after `make pipeline`): metrics/rlhf_seeds.{json,md}, the verdicts in RESULTS.md
rlhf-seeds: setup
	$(PY) -m flows.seeds
	$(PY) -m tasks.report

# GPT-1's fine-tuning again from more pre-training seeds (after `make pipeline`): metrics/gpt1_seeds.{json,md}, the verdicts in RESULTS.md
gpt1-seeds: setup
	$(PY) -m flows.gpt1_seeds
	$(PY) -m tasks.report

# RESULTS.md from metrics/: every results table, generated (the end of `make pipeline`)
report: setup
	$(PY) -m tasks.report

test: setup
	$(PY) -m pytest -m "not gpu" -q

# A local Prefect server on 127.0.0.1 and the served deployment `instructflow/local`.
serve: setup
	PREFECT_UI_API_URL=http://127.0.0.1:$(PORT)/api $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PORT) & \
	server=$$!; trap "kill $$server" EXIT; \
	PREFECT_API_URL=http://127.0.0.1:$(PORT)/api $(PY) -m flows.serve

# The ranking page for people (after the candidates stage; docs/ranking.md): http://127.0.0.1:$(RANK_PORT),
# answers appended to labels/human.jsonl; it stops once every candidate is ranked, then DVC versions the file.
RANK_PORT ?= 8765
rank: setup
	$(PY) -m flows.ranking_page --port $(RANK_PORT)
	$(VENV)/bin/dvc add -q labels/human.jsonl

# docs/ranking.png: the page in headless Chromium, as its end-to-end test drives it (needs chromium + playwright)
ranking-screenshot: setup
	INSTRUCTFLOW_SCREENSHOT=docs/ranking.png $(PY) -m pytest -q -p no:cacheprovider tests/test_ranking_page.py -k chromium

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

bench: setup
	$(PY) bench/bench_pretrain.py
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_prompt_eval.py

# outputs and local state; params.yaml is committed (experiment=default), so it is restored, not removed
clean:
	rm -rf data models metrics mlruns mlflow.db dvc.lock .prefect .resume
	git checkout -- params.yaml 2>/dev/null || true

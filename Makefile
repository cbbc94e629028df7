# Two commands do all the set-up: `make run` and `make test`. Both create .venv with Python 3.11
# and install the exact pins from the lock files the first time (and again when a lock changes).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test demo bench clean check

$(VENV)/.created:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"' \
		|| { echo "error: $(PYTHON) is missing or older than 3.11; install Python 3.11 or run: make PYTHON=/path/to/python3.11 ..."; exit 2; }
	$(PYTHON) -m venv $(VENV)
	@touch $@

$(VENV)/.runtime: requirements.lock $(VENV)/.created
	$(PIP) install -r requirements.lock
	@touch $@

$(VENV)/.dev: requirements-dev.lock requirements.lock $(VENV)/.runtime
	$(PIP) install -r requirements-dev.lock
	@touch $@

## Run the bot (reads .env; see README and .env.example).
run: $(VENV)/.runtime
	$(PY) bot.py

## The whole test suite: lint, format check, type check, then pytest (no network needed but for the
## package registries; installs Debian's PostgreSQL for the PostgreSQL tests when it is missing and
## this runs as root, and the pinned copy of Discord's OpenAPI description the fake Discord checks
## requests against, with npm).
test: $(VENV)/.dev
	@bash scripts/ensure-postgres.sh
	@bash scripts/ensure-discord-spec.sh
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q

## The whole flow offline: the real bot against a local fake Discord and a simulated API.
demo: $(VENV)/.runtime
	$(PY) -m demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-output

## Benchmark: our bot and a minimal baseline bot, side by side (not part of the test suite): warm
## bots at bursts of 1, 8, 32 and 200, then cold starts (a fresh process, one request, then 200), then
## the bot's memory when the API sends ten 25 MB outputs per job (bench/memory.py).
bench: $(VENV)/.runtime
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench --cold $(BENCH_COLD_ARGS)
	$(PY) -m bench.memory

## The owner's check: settings, a Discord login, and the image service, generating nothing.
check: $(VENV)/.runtime
	$(PY) bot.py --check

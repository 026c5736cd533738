# The two commands a newcomer needs: `make run` and `make test`. See README.md.
# Python 3.11 is required; PYTHON=/path/to/python3.11 picks a specific interpreter.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# `make run HOST=0.0.0.0 PORT=8001` serves elsewhere.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run sandbox test benchmark lint format clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(v != (3, 11) and f"Python 3.11 is required but $(PYTHON) is {v[0]}.{v[1]}: make PYTHON=/path/to/python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# A local settings file for `make run`: DEBUG on and a random SECRET_KEY. Kept if present.
.env: | .env.example
	umask 077 && sed -e "s/^SECRET_KEY=.*/SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(40))')/" \
		-e "s/^DEBUG=.*/DEBUG=true/" .env.example > .env.tmp && mv .env.tmp .env

## run: install, migrate the embedded SQLite database under var/, load the demo, serve,
## with the sandbox payment provider on :8765 beside it so the demo works offline
run: $(STAMP) .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py escrow_seed_demo --base-url http://$(HOST):$(PORT)
	$(BIN)/python manage.py payments_sandbox --webhook-url http://$(HOST):$(PORT)/webhooks/dynopay/ & \
	sandbox=$$!; trap 'kill $$sandbox 2>/dev/null' EXIT INT TERM; \
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

## sandbox: only the sandbox payment provider (for a server started some other way)
sandbox: $(STAMP) .env
	$(BIN)/python manage.py payments_sandbox --webhook-url http://$(HOST):$(PORT)/webhooks/dynopay/

## test: the whole suite on PostgreSQL (DATABASE_URL, else 127.0.0.1:5432, else a
## throwaway cluster; see scripts/with-postgres.sh). PYTEST_ARGS="-k ledger -x" narrows it.
test: $(STAMP)
	SECRET_KEY=test-only-secret-key DEBUG=false scripts/with-postgres.sh $(BIN)/pytest $(PYTEST_ARGS)

## benchmark: webhook throughput on PostgreSQL, e.g. BENCH_ARGS="--requests 5000 --clients 4"
benchmark: $(STAMP)
	scripts/with-postgres.sh $(BIN)/python benchmarks/webhook_bench.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## clean: remove the virtualenv and the local database (the demo starts over)
clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis

# The two commands that matter: `make run` and `make test`. Both install into .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c  # a failing command in a pipe fails the recipe
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SAMPLE := data/sample-events.jsonl.gz

.PHONY: install tools run replay test faults audit lint typecheck schemas sample dashboards bench bench-service clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the live demo: embedded broker, a worker, simulated traffic, a live view (Ctrl-C stops)
run: install
	$(BIN)/linkwatch dev

## replay: replay the sample data shipped in the repo and print the report
replay: install
	$(BIN)/linkwatch replay $(SAMPLE) --out /tmp/linkwatch-triggers.jsonl --dead-letters /tmp/linkwatch-dead-letters.jsonl
	@echo "triggers: /tmp/linkwatch-triggers.jsonl   dead letters: /tmp/linkwatch-dead-letters.jsonl"

# Third-party checkers the tests run (Debian packages): promtool for the alert rules,
# docker-compose to validate the compose file (no engine needed), chromium for the /ui page.
# Installed when missing.
TOOLS := promtool docker-compose chromium
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends \
	    prometheus docker-compose chromium >/dev/null; \
	fi

## test: lint, type-check (mypy strict on src/), schemas in sync, dependency audit, the whole
## pytest suite (with a fast variant of each fault suite)
test: install tools lint typecheck audit
	$(BIN)/linkwatch schemas --check
	$(BIN)/pytest

## faults: the long fault suites (200k events and 5 kill -9s, a rebalance, a 30 s broker
## outage, a 15-minute soak, 100k fuzzed records); about 30 minutes here
faults: install
	$(BIN)/pytest --faults -m faults -p no:cacheprovider -s

## audit: known vulnerabilities in the pinned dependencies (pip-audit, PyPI's advisory data).
## A vulnerable pin fails it; dependencies PyPI cannot answer for are listed as skipped.
audit: install
	$(BIN)/pip-audit -r constraints.txt --no-deps --disable-pip --progress-spinner off 2>&1 \
	  | $(BIN)/python -c 'import sys; lines = sys.stdin.read().splitlines(); skipped = [l for l in lines if "could not be audited" in l]; print("\n".join(l for l in lines if l not in skipped)); print(f"pip-audit: {len(skipped)} dependencies skipped (PyPI had no record of them)")'

lint: install
	$(BIN)/ruff check src tests bench deploy/grafana
	$(BIN)/ruff format --check src tests bench deploy/grafana

typecheck: install
	$(BIN)/mypy src
	$(BIN)/mypy --strict deploy/grafana/build_dashboards.py

## dashboards: regenerate the Grafana dashboards (deploy/grafana/dashboards/*.json)
dashboards: install
	$(BIN)/python deploy/grafana/build_dashboards.py

schemas: install
	$(BIN)/linkwatch schemas

## sample: regenerate the sample data (deterministic: same bytes every time)
sample: install
	$(BIN)/linkwatch simulate --out $(SAMPLE) --users 1500 --seed 7 --start 1732233600000

# Quix Streams (a bench contender) pins its own Kafka client, so it gets a venv of its own.
QUIX_VENV  := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed-stamp
$(QUIX_STAMP): bench/requirements-quix.txt
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements-quix.txt
	touch $(QUIX_STAMP)

## bench: every contender on the same topic in one run (raw aiokafka, Quix Streams, Faust
## no-op / take / naive Table, the LinkWatch worker, replay), then deadline latency, then the
## worker on batch records (as SDKs send them: --batch 50), then replay beside its floor,
## then one worker against a group of two (bench/scale_out.py);
## tables on stdout, JSON in bench/results/. Not part of `make test`.
bench: install $(QUIX_STAMP)
	$(BIN)/python bench/service.py --events 200000
	$(BIN)/python bench/service.py --events 100000 --skip-latency --worker-only --batch 50 \
		--out bench/results/service-throughput-batch50.json
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/scale_out.py --events 200000

bench-service: install
	$(BIN)/python bench/service.py

clean:
	rm -rf $(VENV) $(QUIX_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The two commands a new user needs are the first two targets: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

# PYTHON is the interpreter .venv is made with. Given explicitly (`PYTHON=python3.12 make run`, or exported) and of
# another version than the one in .venv, it makes .venv again; otherwise an existing .venv is kept, whatever made it.
python_version = $(shell $(1) -c 'import sys; print(*sys.version_info[:3], sep=".")' 2>/dev/null)
ifneq ($(filter environment command,$(firstword $(origin PYTHON))),)
ifneq ($(wildcard $(BIN)/python),)
PYTHON_VERSION := $(call python_version,$(PYTHON))
VENV_VERSION := $(call python_version,$(BIN)/python)
ifneq ($(PYTHON_VERSION),$(VENV_VERSION))
REMAKE_VENV := $(PYTHON) is Python $(PYTHON_VERSION), $(VENV) has $(or $(VENV_VERSION),a broken one)
endif
endif
endif

.PHONY: run test chromium prometheus faults bench bench-quick loadtest image chart-readme clean FORCE

run: $(STAMP) ## Start nats-server, both services and 5 simulated devices; Ctrl-C stops everything
	$(BIN)/telemetry run --simulate 5

test: $(STAMP) chromium prometheus ## Lint, type-check and run the whole test suite against real nats-server processes
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# The dashboard's tests (tests/stream/test_page_browser.py) drive Debian's chromium with Playwright, never a browser
# Playwright would download; the tests look for it where these paths say, and fail with the command below without it.
CHROMIUM_PATHS := /usr/bin/chromium /usr/bin/chromium-headless-shell
CHROMIUM_INSTALL := apt-get update && apt-get install -y --no-install-recommends chromium
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

chromium: ## Debian's chromium for the browser tests: installed with apt when missing (as root), else the command to run
	@for path in $(CHROMIUM_PATHS); do if [ -x "$$path" ]; then exit 0; fi; done; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "error: the browser tests need Debian's chromium; as root, run: $(CHROMIUM_INSTALL)" >&2; exit 1; \
	fi; \
	echo "installing Debian's chromium for the browser tests: $(CHROMIUM_INSTALL)"; \
	export DEBIAN_FRONTEND=noninteractive; $(CHROMIUM_INSTALL)

# The chart's monitoring tests check and unit-test its alerts with promtool (tests/charts/test_monitoring.py),
# and evaluate them and the dashboard's queries in a real prometheus (tests/test_prometheus.py); without Debian's
# prometheus package they fail with the command below.
PROMETHEUS_PATHS := /usr/bin/promtool /usr/bin/prometheus
PROMETHEUS_INSTALL := apt-get update && apt-get install -y --no-install-recommends prometheus

prometheus: ## Debian's prometheus and promtool for the monitoring tests: installed with apt when missing (as root), else the command
	@missing=; for path in $(PROMETHEUS_PATHS); do [ -x "$$path" ] || missing=1; done; [ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "error: the monitoring tests need Debian's prometheus; as root, run: $(PROMETHEUS_INSTALL)" >&2; exit 1; \
	fi; \
	echo "installing Debian's prometheus for the monitoring tests: $(PROMETHEUS_INSTALL)"; \
	export DEBIAN_FRONTEND=noninteractive; $(PROMETHEUS_INSTALL)

FAULT_ROUNDS ?= 10

faults: $(STAMP) ## The cluster fault tests at length: each kills and restarts a node FAULT_ROUNDS times (make test: once)
	$(BIN)/pytest tests/ingest/test_faults.py tests/stream/test_faults.py --fault-rounds $(FAULT_ROUNDS)

BENCH_STAMP := $(VENV)/.installed-bench

bench: $(BENCH_STAMP) ## The benchmarks of bench/README.md against reference servers, one table (about 35 min)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.ingest

bench-quick: $(BENCH_STAMP) ## The same with small numbers, to try the harness (about 4 min)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)
	$(BIN)/python -m bench.ingest --quick

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@test -e /usr/lib/nginx/modules/ngx_nchan_module.so || echo "optional: apt-get install -y nginx libnginx-mod-nchan adds the Nchan reference"
	touch $@

LOADTEST_ARGS ?= --run-time-s 60 --shape storm --devices 200 --dashboards 100 --sites 20

loadtest: $(STAMP) ## Locust load test, headless and bounded, against a platform started here; reports in loadtest/reports/
	$(BIN)/python -m loadtest.run $(LOADTEST_ARGS)

$(STAMP): pyproject.toml $(if $(REMAKE_VENV),FORCE)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(if $(REMAKE_VENV),@echo "$(REMAKE_VENV): making $(VENV) again")
	$(PYTHON) -m venv $(if $(REMAKE_VENV),--clear )$(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= telemetry-platform:$(VERSION)

image: ## Build the container image (one image: `telemetry ingest` by default, `telemetry stream`)
	docker build -t $(IMAGE) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD) --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) .

chart-readme: $(STAMP) ## Regenerate the values table of charts/telemetry/README.md from values.yaml
	$(BIN)/python charts/values_table.py charts/telemetry

FORCE:

clean: ## Remove the virtualenv and local data
	rm -rf $(VENV) .telemetry .mypy_cache .ruff_cache .pytest_cache

# The two commands a new user needs are the first two targets: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: run test bench bench-quick loadtest image chart-readme clean

run: $(STAMP) ## Start nats-server, both services and 5 simulated devices; Ctrl-C stops everything
	$(BIN)/telemetry run --simulate 5

test: $(STAMP) ## Lint, type-check and run the whole test suite against real nats-server processes
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

BENCH_STAMP := $(VENV)/.installed-bench

bench: $(BENCH_STAMP) ## Benchmarks of shared/BENCHMARKS.md against reference servers, one table (about 15 min)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.ingest

bench-quick: $(BENCH_STAMP) ## The same with small numbers, to try the harness (about a minute)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)
	$(BIN)/python -m bench.ingest --quick

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@test -e /usr/lib/nginx/modules/ngx_nchan_module.so || echo "optional: apt-get install -y nginx libnginx-mod-nchan adds the Nchan reference"
	touch $@

LOADTEST_ARGS ?= --run-time-s 60 --shape storm --devices 200 --dashboards 100 --sites 20

loadtest: $(STAMP) ## Locust load test, headless and bounded, against a platform started here; reports in loadtest/reports/
	$(BIN)/python -m loadtest.run $(LOADTEST_ARGS)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
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

clean: ## Remove the virtualenv and local data
	rm -rf $(VENV) .telemetry .mypy_cache .ruff_cache .pytest_cache

# Two entry points for a fresh machine with Python 3.11 and make:
#   make run    set up .venv and run the pipeline on the bundled sample
#   make test   set up .venv and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=
# pytest-xdist workers: one per core this process may use (its CPU quota included) and one more, since
# the slowest tests mostly wait (on heartbeats, servers, a 0.4-CPU quota) with a core idle; handed one
# test at a time, longest first (tests/durations.json: tests/conftest.py), so no long test starts last.
WORKERS ?= -n $(shell $(PYTHON) -c 'import math; from imgflow.runtime.cpus import budget; print(math.ceil(budget().cores) + 1)') \
	--dist load --maxschedchunk 1

.PHONY: install run lint docs test test-fast test-containers image durations fuzz server server-stop clipart benchmark lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip==26.3"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/imgflow run --artifacts $(ARTIFACTS)

# Lint and format (ruff), types (mypy) and the layers (import-linter's contracts in pyproject.toml)
# over the library, the tasks and the flows: zero findings.
lint: $(STAMP)
	$(BIN)/ruff check imgflow flows tasks
	$(BIN)/ruff format --check imgflow flows tasks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The docs site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or reference.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# A test marked wall_clock asserts how long a whole run took (a budget kept): it runs alone, after the
# rest, since other workers' servers and training would take the CPU its plan measured.
test: lint docs
	$(BIN)/python -m pytest $(WORKERS) -m "not containers and not wall_clock" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m wall_clock $(PYTEST_ARGS)

# The fast tier's tests are short and busy on the CPU: one worker per core, each taking whole modules
# (--dist loadfile), so a module's shared fixtures are built once, not on every worker.
FAST_WORKERS ?= -n $(shell $(PYTHON) -c 'import math; from imgflow.runtime.cpus import budget; print(math.ceil(budget().cores))') \
	--dist loadfile
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(FAST_WORKERS) -m "not slow and not containers and not wall_clock" $(PYTEST_ARGS)

# imgflow's image (deploy/image/Dockerfile) from this checkout, with no network in the build: a
# wheelhouse from requirements.lock, and a Debian bookworm base made here when BASE cannot be pulled.
IMAGE ?= imgflow:latest
image: $(STAMP)
	IMAGE=$(IMAGE) PYTHON=$(BIN)/python bash deploy/image/build.sh

# The image run as production runs it: alone with a CPU limit, and by a real Docker work pool's worker
# against a real Prefect server (tests/containers; each skips, saying why, without a Docker daemon).
test-containers: $(STAMP)
	if docker info >/dev/null 2>&1; then IMAGE=$(IMAGE) PYTHON=$(BIN)/python bash deploy/image/build.sh; \
	else echo "make test-containers: no Docker daemon answers; the tests skip"; fi
	IMGFLOW_IMAGE=$(IMAGE) $(BIN)/python -m pytest -m containers $(PYTEST_ARGS) tests/containers

# Rewrite tests/durations.json (the long tests' seconds, which order the suite) from a full run.
durations: $(STAMP)
	$(BIN)/python -m pytest $(WORKERS) -m "not containers and not wall_clock" --store-durations $(PYTEST_ARGS)

# Longer fuzzing than make test's fixed inputs (about 12 minutes on 2 cores): each Hypothesis target in
# tests/fuzz draws fresh random inputs for FUZZ_SECONDS, then each atheris (libFuzzer) target runs for
# ATHERIS_SECONDS. Each says how many inputs it tried; a crash stops with its input (atheris's under
# .fuzz/) to turn into a regular test.
FUZZ_SECONDS ?= 60
ATHERIS_SECONDS ?= 90
fuzz: $(STAMP)
	IMGFLOW_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m pytest $(WORKERS) tests/fuzz
	mkdir -p .fuzz
	for target in image spec archive; do \
	  $(BIN)/python -m tests.fuzz.atheris_targets $$target -max_total_time=$(ATHERIS_SECONDS) -timeout=30 \
	    -rss_limit_mb=4096 -artifact_prefix=.fuzz/ > .fuzz/atheris-$$target.log 2>&1 \
	    || { grep -v '^#' .fuzz/atheris-$$target.log | tail -40; exit 1; }; \
	  echo "atheris $$target: $$(grep '^Done' .fuzz/atheris-$$target.log)"; \
	done

# A lasting Prefect server for deployments: PostgreSQL, basic auth, 127.0.0.1:4200 (docs/how-to/service.md).
server: $(STAMP)
	$(BIN)/imgflow server start

server-stop: $(STAMP)
	$(BIN)/imgflow server stop

# The image + text dataset (datasets/clipart.toml): Debian's openclipart-svg drawings rendered to PNG with
# their titles, in data/clipart.parquet. Installs openclipart-svg and librsvg2-bin when missing (as root).
clipart: $(STAMP)
	$(BIN)/imgflow datasets clipart

benchmark: $(STAMP)
	$(BIN)/python benchmarks/orchestration_overhead.py

# Re-pin every transitive dependency after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^imgflow' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache

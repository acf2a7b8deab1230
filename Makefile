# Two entry points for a fresh machine with Python 3.11 and make:
#   make run    set up .venv and run the pipeline on the bundled sample
#   make test   set up .venv and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=
# One pytest worker per core (pytest-xdist); worksteal evens out the long integration tests.
WORKERS ?= -n auto --dist worksteal

.PHONY: install run test test-fast benchmark lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip==26.3"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/imgflow run --artifacts $(ARTIFACTS)

test: $(STAMP)
	$(BIN)/python -m pytest $(WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(WORKERS) -m "not slow" $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(BIN)/python benchmarks/orchestration_overhead.py

# Re-pin every transitive dependency after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^imgflow' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache

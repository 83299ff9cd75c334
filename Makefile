# pretrade — two commands: `make run` starts the whole system, `make test` runs the whole suite.
# Both set everything up first (a .venv, the compiled kernels, the generated protobuf code).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := $(wildcard fastpath/*.pyx fastpath/*.pxd gateway/*.pyx gateway/*.pxd proto/pretrade/v1/*.proto)
DATA_DIR ?= .pretrade
RULES ?= examples/rules.toml

.PHONY: install build lint test run bench clean

install: $(STAMP) build

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,fix]'
	touch $@

# Recompile the kernels and regenerate protobuf code when their sources change.
build: $(STAMP) $(VENV)/.build-stamp

$(VENV)/.build-stamp: $(SOURCES) setup.py | $(STAMP)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

# Pyflakes and bugbear errors (unused imports, undefined names, likely bugs); the rule set
# is in pyproject.toml.
lint: install
	$(BIN)/ruff check .

# Lint, then the whole suite, with the benchmarks in short mode (each runs once, untimed,
# so they cannot rot; their behavioural asserts still hold).
test: lint
	$(BIN)/python -m pytest --benchmark-disable $(PYTEST_ARGS)

run: install
	$(BIN)/pretrade up --rules $(RULES) --data-dir $(DATA_DIR)

bench: install
	$(BIN)/python -m pytest bench --benchmark-only $(PYTEST_ARGS)

clean:
	rm -rf build *.egg-info fastpath/*.c fastpath/*.so gateway/*.c gateway/*.so proto/pretrade/v1/*_pb2*.py* $(VENV)

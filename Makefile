# The project's commands. `make demo` runs the main job end to end on real
# Kafka and PostgreSQL (started from deploy/); `make test` runs the tests.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint docs validate bench stack-start stack-stop clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), \
		"focus-ledger needs Python 3.11 or 3.12, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

demo: venv
	deploy/stack.sh start
	eval "$$(deploy/stack.sh env)" && $(BIN)/focus-ledger demo

test: venv
	deploy/test.sh

lint: venv
	$(BIN)/ruff check ledger service tests bench .ci
	$(BIN)/ruff format --check ledger service tests bench .ci
	$(BIN)/mypy ledger service tests bench

docs: venv
	$(BIN)/focus-ledger docs
	$(BIN)/python -m tests.hostile --write

# Throughput against the ceiling, latency and memory, on the local stack.
bench: venv
	deploy/stack.sh start
	eval "$$(deploy/stack.sh env)" && $(BIN)/python bench/throughput.py

validate: venv
	$(BIN)/python .ci/focus_validator.py build/demo/focus.parquet

stack-start:
	deploy/stack.sh start

stack-stop:
	deploy/stack.sh stop

clean:
	rm -rf $(VENV) .venv-validator build .pytest_cache .mypy_cache .ruff_cache

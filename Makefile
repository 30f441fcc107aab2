# Two commands: `make run` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test lint typecheck pytest bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/jobhook serve --config config/jobhook.yaml

test: $(STAMP_TEST) lint typecheck pytest

lint: $(STAMP_TEST)
	$(BIN)/ruff check receiver notifiers tests bench
	$(BIN)/ruff format --check receiver notifiers tests bench
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP_TEST)
	$(BIN)/mypy

pytest: $(STAMP_TEST)
	$(BIN)/pytest -q

bench: $(STAMP_TEST)
	$(BIN)/python -m bench.ingest $(BENCH_ARGS)
	$(BIN)/python -m bench.delivery $(BENCH_ARGS) $(DELIVERY_ARGS)
	$(BIN)/python -m bench.history $(HISTORY_ARGS)

# 10 minutes of mixed load (not part of `make bench` or CI): are RSS and latency flat?
# `make soak SOAK_ARGS="--duration 60 --interval 15"` for a short proof run.
soak: $(STAMP_TEST)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

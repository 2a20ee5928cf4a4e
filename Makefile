# Two commands on a fresh machine:  make demo  |  make test
# Everything else is a building block of those two.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STACK  := $(PY) devstack/stack.py
PYTEST_ARGS ?= --durations=30

.PHONY: help venv stack-up stack-down stack-status test test-fast lint rules-check demo bench clean-stack

help:
	@echo "make demo          run the order saga demo on the local stack"
	@echo "make test          install, start the stack, run the whole suite (what CI runs)"
	@echo "make stack-up      start PostgreSQL, Kafka and Kafka Connect (idempotent)"
	@echo "make stack-status  show what runs and where"
	@echo "make stack-down    stop the stack"
	@echo "OUTBOX_STACK_FAST=1 make stack-up   PostgreSQL without durable commits (edit-test loop only)"
	@echo "make lint          ruff + mypy --strict"
	@echo "make rules-check   promtool: check and unit-test deploy/prometheus's rules"

# The virtualenv is rebuilt when pyproject.toml changes, or the C extension's sources
# (outbox/_speedups.c, built by the editable install: it needs cc and Python's headers).
$(VENV)/.installed: pyproject.toml setup.py outbox/_speedups.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

stack-up: venv
	$(STACK) up

stack-down:
	@test -x $(PY) && $(STACK) down || $(PYTHON) devstack/stack.py down

stack-status:
	@$(PYTHON) devstack/stack.py status

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

# Needs Debian's prometheus package (promtool); .ci/run installs it.
rules-check:
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml

test: venv stack-up
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Skips the slow (kill -9, outage) tests: for the edit-test loop.
test-fast: venv stack-up
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

demo: venv stack-up
	$(PY) -m services.demo

# Quick versions of every benchmark; docs/benchmarks.md has the full commands and figures.
bench: venv stack-up
	$(PY) bench/publish.py --rounds 4
	$(PY) bench/relay.py --events 20000 --rounds 2
	$(PY) bench/consumer.py --events 5000 --rounds 2
	$(PY) bench/cdc.py --events 5000 --rate 100 --seconds 5 --rounds 2
	$(PY) bench/saga.py --seconds 10

clean-stack: stack-down
	rm -rf .stack

# The two commands of the README: `make run` (the embedded-default sweep) and `make test`.
# Each does its own set-up from a clean clone (scripts/bootstrap.sh is idempotent: seconds when done).
PY := .venv/bin/python
SPEC ?= search_spaces/rank_study.yaml

.PHONY: setup run test lint bench clean

setup:
	bash scripts/bootstrap.sh

run: setup
	.venv/bin/sweep run $(SPEC)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

# BENCHMARKS.md (issue 6): about 40 min on 2 cores; BENCH_ARGS=--quick for a smoke run, --only SECTIONS for some
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf mlruns/* .pytest_cache

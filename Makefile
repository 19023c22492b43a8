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

# BENCHMARKS.md (issues 6, 18): about 1 h 50 min on 2 quiet cores (scripts/bench.py's docstring has each section's share);
# BENCH_ARGS=--quick for a smoke run (~20 min), --only SECTIONS for some. The `bench` extra (SetFit, a peer) is
# installed here only, so `make run` / `make test` never pull it.
bench: setup
	$(PY) -c "import setfit" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q -e ".[bench]"
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf mlruns/* .pytest_cache

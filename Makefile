# mmoverlock: `make demo` runs the main job on built-in data, `make test` runs the tests.
# Both build the environment on first use (tools/setup_env.sh: a cached venv keyed by requirements/lock/).
PY := .venv/bin/python
PYTEST_ARGS ?=
# One intra-op thread per process: the tests' models are tiny and several tests run 2-process DDP on
# 2 cores, where oversubscribed OpenMP threads slow a step down by two orders of magnitude.
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest

.PHONY: env test test-fast lint demo clean

env:
	@bash tools/setup_env.sh

# everything (what .ci/run runs)
test: env
	$(PYTEST) -q $(PYTEST_ARGS) tests

# the unit tests: no test marked slow or integration (setup.cfg)
test-fast: env
	$(PYTEST) -q -m "not slow and not integration" $(PYTEST_ARGS) tests

lint: env
	$(PY) -m flake8 mmoverlock tools tests configs setup.py
	$(PY) -m isort --check-only --diff mmoverlock tools tests configs setup.py

demo: env
	$(PY) tools/demo.py

clean:
	rm -rf work_dirs .pytest_cache

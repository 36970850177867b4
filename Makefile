# mmoverlock: `make demo` runs the main job on built-in data, `make test` runs the tests.
# Both build the environment on first use (tools/setup_env.sh: a cached venv keyed by requirements/pins.txt).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test demo clean

env:
	@bash tools/setup_env.sh

# One intra-op thread per process: the tests' models are tiny and several tests run 2-process DDP on
# 2 cores, where oversubscribed OpenMP threads slow a step down by two orders of magnitude.
test: env
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: env
	$(PY) tools/demo.py

clean:
	rm -rf work_dirs .pytest_cache

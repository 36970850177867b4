# mmoverlock: `make demo` runs the main job on built-in data, `make test` runs the tests.
# Both build the environment on first use (tools/setup_env.sh: a cached venv keyed by requirements/pins.txt).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test demo clean

env:
	@bash tools/setup_env.sh

test: env
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: env
	$(PY) tools/demo.py

clean:
	rm -rf work_dirs .pytest_cache

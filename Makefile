# mmoverlock: `make demo` runs the main job on built-in data, `make test` runs the tests.
# Both build the environment on first use (tools/setup_env.sh: this checkout's .venv, from a shared cache).
PY := .venv/bin/python
PYTEST_ARGS ?=
# One intra-op thread per process: the tests' models are tiny and several tests run 2-process DDP on
# 2 cores, where oversubscribed OpenMP threads slow a step down by two orders of magnitude.
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest

.PHONY: env env-compat test test-compat test-fast lint demo clean

env:
	@bash tools/setup_env.sh

# everything (what .ci/run runs)
test: env
	$(PYTEST) -q $(PYTEST_ARGS) tests

# The compatibility lane (docs/compat.md): the oldest supported stack, torch 2.1 + Triton 2.1 + mmcv 2.1.0
# (tools/setup_env_compat.sh, requirements/lock/compat*.txt): the ops, backbone, ContMix, golden fixture,
# checkpoints (safe loading, converters), plugin, ONNX export, and one detection and one segmentation run
# through the tools.
# MMOVERLOCK_EXPECT_TORCH: tests/test_compat.py checks that the run really uses the locked torch.
COMPAT_PY := .venv-compat/bin/python
COMPAT_TORCH := $(shell sed -n 's/^torch==\([0-9]*\.[0-9]*\).*/\1/p' requirements/lock/compat-core.txt)
COMPAT_TESTS := tests/test_compat.py tests/test_ops.py tests/test_depthwise.py tests/test_backbone.py \
	tests/test_contmix.py tests/test_fixture.py tests/test_convert.py tests/test_plugin.py tests/test_deploy.py \
	tests/test_reliability.py::test_pickle_with_arbitrary_class_is_refused_from_urls \
	tests/test_reliability.py::test_bad_checkpoints_through_init_cfg_give_one_line \
	tests/test_reliability.py::test_load_from_checked_before_the_run \
	tests/test_det.py::test_mask_rcnn_train_then_test_prints_coco_metrics \
	tests/test_seg.py::test_train_two_iterations_from_imagenet_checkpoint tests/test_seg.py::test_test_with_eval_miou \
	tests/test_triton21.py tests/test_kernel_selfcheck.py tests/test_gpu_check.py::test_feature_sizes_follow_the_strided_convs \
	tests/test_gpu_check.py::test_training_step_runs_on_this_torch \
	tests/test_gpu_check.py::test_self_check_row_reports_the_first_use_check

env-compat:
	@bash tools/setup_env_compat.sh

test-compat: env-compat
	MMOVERLOCK_EXPECT_TORCH=$(COMPAT_TORCH) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(COMPAT_PY) -m pytest -q \
		-p no:cacheprovider $(PYTEST_ARGS) $(COMPAT_TESTS)

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

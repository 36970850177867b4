"""timm's own model tests (``tests/test_models.py`` of the timm version the lock pins, as timm ships it) on the
``overlock_*`` models, run unedited in a subprocess: ``TORCH_BACKEND=mmoverlock.timm`` registers the models,
``-k overlock`` selects them, ``GITHUB_ACTIONS=1`` leaves out the tests that download weights.

The suite is fetched into the environment cache by ``tools/env/fetch_timm_tests.sh`` (the environment build runs
it); without network the test skips and says how to fetch it."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import timm

CACHE = os.environ.get('MMOVERLOCK_CACHE', osp.expanduser('~/.cache/mmoverlock'))
SUITE = osp.join(CACHE, f'timm-tests-{timm.__version__}', 'tests')
#: what the suite selects per model with GITHUB_ACTIONS set: forward, backward, torchscript, features, fx forward,
#: fx backward, and default_cfgs once per pretrained tag (.in1k, .in1k_reparam)
TESTS_PER_MODEL = 8
MODELS = 4


@pytest.mark.slow
def test_timm_model_suite_passes_for_every_overlock_model():
    if not osp.isfile(osp.join(SUITE, 'test_models.py')):
        pytest.skip(f'timm=={timm.__version__} tests not fetched: tools/env/fetch_timm_tests.sh {CACHE} '
                    f'.venv/bin/python')
    env = dict(os.environ, TORCH_BACKEND='mmoverlock.timm', GITHUB_ACTIONS='1', OMP_NUM_THREADS='1',
               MKL_NUM_THREADS='1')
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-k', 'overlock', '-W', 'ignore',
         '--rootdir', SUITE, osp.join(SUITE, 'test_models.py')],
        cwd=SUITE, env=env, capture_output=True, text=True, timeout=1200)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    counts = {kind: int(n) for n, kind in re.findall(r'(\d+) (passed|failed|error|errors|skipped)', summary)}
    assert run.returncode == 0 and not counts.get('failed') and not counts.get('error') \
        and not counts.get('errors'), run.stdout[-6000:] + run.stderr[-2000:]
    assert counts.get('passed') == TESTS_PER_MODEL * MODELS, summary

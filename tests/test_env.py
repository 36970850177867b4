"""Each checkout its own environment: ``tools/setup_env.sh`` builds a checkout's ``.venv`` with that checkout
installed editable, from the cache the running environment was built from (tools/env/common.sh), so two clones
never run each other's code and building one leaves the other as it is.

The clones' venvs are built against the cache that built the running ``.venv`` (its ``.mmoverlock-cache``), which
``make test`` has just made warm: seconds per clone, no mmcv compile. A python not built by tools/setup_env.sh has
no such cache: the test then skips, naming it.
"""
import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def running_cache():
    """The cache the running venv was built from, or skip: without its compiled mmcv a clone's build would compile
    mmcv for ~10 minutes."""
    record = osp.join(sys.prefix, '.mmoverlock-cache')
    if not osp.isfile(record):
        pytest.skip(f'{sys.prefix} was not built by tools/setup_env.sh (no .mmoverlock-cache): make env builds one')
    with open(record) as f:
        cache = f.read().strip()
    python = '%d.%d' % sys.version_info[:2]
    if not glob.glob(osp.join(cache, 'wheels', f'mmcv-*-torch{torch.__version__}-py{python}', 'mmcv-*.whl')):
        pytest.skip(f'{cache} holds no mmcv wheel for torch {torch.__version__}, python {python}')
    return cache


def make_checkout(dest):
    """Copy this checkout's files as git sees them (tracked and untracked, not ignored) to ``dest``: a clone
    carrying the working tree's changes."""
    names = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split('\0')
    for name in names:
        if name and osp.isfile(osp.join(ROOT, name)):
            os.makedirs(osp.dirname(osp.join(dest, name)), exist_ok=True)
            shutil.copy2(osp.join(ROOT, name), osp.join(dest, name))
    return str(dest)


def clean_env(**extra):
    """The test run's environment without what would point a python elsewhere (PYTHONPATH: a developer's run)."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    env.update(extra)
    return env


def build(checkout, cache):
    """``bash tools/setup_env.sh`` in ``checkout``, with the running venv's base python; its output."""
    done = subprocess.run(['bash', 'tools/setup_env.sh'], cwd=checkout, capture_output=True, text=True, timeout=600,
                          env=clean_env(MMOVERLOCK_CACHE=cache, PYTHON=sys._base_executable))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def imported_from(python, cwd):
    """Where ``python`` imports mmoverlock from, started in ``cwd``."""
    done = subprocess.run([python, '-c',
                           'import mmoverlock; print(mmoverlock.__file__)'], cwd=cwd, capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def venv_state(checkout):
    """(path, size, mtime) of every file of ``checkout``'s .venv, byte code caches left out."""
    state = []
    for folder, subfolders, files in os.walk(osp.join(checkout, '.venv')):
        subfolders[:] = [name for name in subfolders if name != '__pycache__']
        for name in files:
            path = osp.join(folder, name)
            stat = os.lstat(path)
            state.append((path, stat.st_size, stat.st_mtime_ns))
    return sorted(state)


@pytest.mark.slow
@pytest.mark.integration
def test_two_checkouts_each_import_their_own_package(tmp_path):
    cache = running_cache()
    ours = imported_from(sys.executable, cwd=str(tmp_path))
    clone_a = make_checkout(tmp_path / 'a')
    clone_b = make_checkout(tmp_path / 'b')
    package_a = osp.join(clone_a, 'mmoverlock', '__init__.py')
    package_b = osp.join(clone_b, 'mmoverlock', '__init__.py')
    python_a, python_b = (osp.join(clone, '.venv', 'bin', 'python') for clone in (clone_a, clone_b))

    out = build(clone_a, cache)
    assert f'mmoverlock imported from {package_a}' in out, out
    assert 'compiling' not in out, out  # the cache's mmcv wheel, not a new compile
    assert osp.isdir(osp.join(clone_a, '.venv')) and not osp.islink(osp.join(clone_a, '.venv'))
    assert imported_from(python_a, cwd=str(tmp_path)) == package_a
    state_a = venv_state(clone_a)

    out = build(clone_b, cache)
    assert f'mmoverlock imported from {package_b}' in out, out
    assert imported_from(python_b, cwd=str(tmp_path)) == package_b
    assert venv_state(clone_a) == state_a  # building b left a's venv as it was
    assert imported_from(python_a, cwd=str(tmp_path)) == package_a

    # an up-to-date checkout: make env returns at once and changes nothing
    assert build(clone_a, cache) == ''
    assert venv_state(clone_a) == state_a

    # a tool run as the README shows it (the tool's folder, not the checkout, is first on sys.path): every
    # mmoverlock module it imports is clone a's (python -v names the source of each module it loads)
    done = subprocess.run([python_a, '-v', 'tools/train.py', '--help'],
                          cwd=clone_a, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert done.returncode == 0 and 'usage: train.py' in done.stdout, done.stdout + done.stderr[-2000:]
    sources = set(re.findall(r"(/[^\s']*/mmoverlock/[^\s']*\.pyc?)\b", done.stderr))
    assert any('/mmoverlock/cli/' in source for source in sources), sorted(sources)
    assert all(source.startswith(osp.join(clone_a, 'mmoverlock') + os.sep) for source in sources), sorted(sources)

    # and the venv running this test imports what it did before
    assert imported_from(sys.executable, cwd=str(tmp_path)) == ours

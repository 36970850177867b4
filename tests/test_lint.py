"""The code follows the lint settings in setup.cfg (flake8 and isort), as ``make lint`` checks."""
import subprocess
import sys

from .conftest import ROOT

SOURCES = ['mmoverlock', 'tools', 'tests', 'configs', 'setup.py']


def test_flake8():
    proc = subprocess.run([sys.executable, '-m', 'flake8', *SOURCES], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_isort():
    proc = subprocess.run([sys.executable, '-m', 'isort', '--check-only', '--diff', *SOURCES], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]

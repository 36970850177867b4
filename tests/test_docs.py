"""The docs stay true to the code, mechanically: every relative link resolves, every repository path the docs
name exists, and every tool command they show runs with ``--help`` and knows the options it is shown with."""
import functools
import glob
import os.path as osp
import re
import subprocess
import sys

import pytest

from .conftest import ROOT

DOCS = sorted(glob.glob(osp.join(ROOT, '*.md')) + glob.glob(osp.join(ROOT, 'docs', '*.md'))
              + glob.glob(osp.join(ROOT, 'configs', '*', 'README.md'))
              + glob.glob(osp.join(ROOT, 'tests', 'data', 'README.md')))
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
CODE_SPAN = re.compile(r'`([^`\n]+)`')
FENCE = re.compile(r'```[a-z]*\n(.*?)```', re.S)
#: a repository path: one of the top-level folders, then path characters only (no placeholders)
REPO_PATH = re.compile(r'^(mmoverlock|tools|configs|tests|docs|requirements)/[\w./-]*[\w/]$')
TOOL_COMMAND = re.compile(r'(?:^|\s)(?:python3? )?(tools/[\w/]+\.py)([^\n#]*)')
OPTION = re.compile(r'(?<![\w-])(--[a-z][a-z0-9-]*)')


def _doc_id(path: str) -> str:
    return osp.relpath(path, ROOT)


def _text(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def _code(text: str) -> list:
    """Every fenced block's lines and every inline code span of a markdown text."""
    pieces = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return pieces + CODE_SPAN.findall(FENCE.sub('', text))


@pytest.mark.parametrize('doc', DOCS, ids=_doc_id)
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(_text(doc)):
        if target.startswith(('http://', 'https://', 'mailto:', '#')):
            continue
        path = osp.normpath(osp.join(osp.dirname(doc), target.split('#')[0]))
        if not osp.exists(path):
            broken.append(target)
    assert broken == [], f'{_doc_id(doc)} links to files that do not exist: {broken}'


@pytest.mark.parametrize('doc', DOCS, ids=_doc_id)
def test_named_paths_exist(doc):
    named = {token.rstrip('/') for piece in _code(_text(doc)) for token in piece.split()
             if REPO_PATH.match(token.strip('"\'(),;:'))}
    named = {token.strip('"\'(),;:') for token in named}
    missing = sorted(p for p in named if not osp.exists(osp.join(ROOT, p)))
    assert missing == [], f'{_doc_id(doc)} names paths that do not exist: {missing}'


def _documented_commands() -> dict:
    """tool path -> the options the docs show it with (from code blocks and inline code)."""
    commands = {}
    for doc in DOCS:
        for piece in _code(_text(doc)):
            for tool, rest in TOOL_COMMAND.findall(piece):
                commands.setdefault(tool, set()).update(OPTION.findall(rest))
    return commands


COMMANDS = _documented_commands()


@functools.lru_cache(maxsize=None)
def _help(tool: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, osp.join(ROOT, tool), '--help'], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_docs_show_the_tools():
    # the check below would pass vacuously if the extraction broke
    assert {'tools/train.py', 'tools/test.py', 'tools/deployment/export_onnx.py',
            'tools/analysis/gpu_check.py'} <= set(COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize('tool', sorted(COMMANDS))
def test_documented_command_runs_with_help(tool):
    assert osp.isfile(osp.join(ROOT, tool)), f'the docs show {tool}, which does not exist'
    proc = _help(tool)
    assert proc.returncode == 0, f'{tool} --help failed: {proc.stderr[-1500:]}'
    unknown = sorted(option for option in COMMANDS[tool] if option not in proc.stdout)
    assert unknown == [], f'the docs show {tool} with options its --help does not know: {unknown}'

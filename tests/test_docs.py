"""The docs stay true to the code, mechanically: every relative link resolves, every repository path the docs
name exists, and every tool command they show runs with ``--help`` and knows the options it is shown with."""
import glob
import os.path as osp
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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


def _run_help(tool: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, osp.join(ROOT, tool), '--help'], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope='module')
def helps(request) -> dict:
    """The ``--help`` of each tool the selected tests ask for, two at a time (each spends its ~6 s importing
    torch and mmengine)."""
    tools = sorted({item.callspec.params['tool'] for item in request.session.items
                    if getattr(item, 'originalname', None) == 'test_documented_command_runs_with_help'
                    and osp.isfile(osp.join(ROOT, item.callspec.params['tool']))})
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(tools, pool.map(_run_help, tools)))


def test_docs_show_the_tools():
    # the check below would pass vacuously if the extraction broke
    assert {'tools/train.py', 'tools/test.py', 'tools/deployment/export_onnx.py',
            'tools/analysis/gpu_check.py'} <= set(COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize('tool', sorted(COMMANDS))
def test_documented_command_runs_with_help(tool, helps):
    assert osp.isfile(osp.join(ROOT, tool)), f'the docs show {tool}, which does not exist'
    proc = helps[tool]
    assert proc.returncode == 0, f'{tool} --help failed: {proc.stderr[-1500:]}'
    unknown = sorted(option for option in COMMANDS[tool] if option not in proc.stdout)
    assert unknown == [], f'the docs show {tool} with options its --help does not know: {unknown}'


# ============================================================================ the README is a front door
README = osp.join(ROOT, 'README.md')
#: the sections of an OpenMMLab ``projects/*/README.md``, in this order
FRONT_DOOR_SECTIONS = ('Description', 'Installation', 'Quick start', 'Usage in your configs', 'Results',
                       'Citation')
README_MAX_LINES = 200


def test_readme_is_a_front_door():
    text = _text(README)
    lines = text.count('\n')
    assert lines < README_MAX_LINES, (f'README.md has {lines} lines; keep it under {README_MAX_LINES} (a front door) '
                                      f'and move the rest to docs/')
    headings = re.findall(r'^## (.+)$', text, re.M)
    assert [h for h in headings if h in FRONT_DOOR_SECTIONS] == list(FRONT_DOOR_SECTIONS), headings
    # the two newcomer commands, and the Makefile targets behind them
    quick_start = text.split('## Quick start\n', 1)[1].split('\n## ', 1)[0]
    assert re.search(r'^make demo\b', quick_start, re.M) and re.search(r'^make test\b', quick_start, re.M)
    makefile = _text(osp.join(ROOT, 'Makefile'))
    assert re.search(r'^demo:', makefile, re.M) and re.search(r'^test:', makefile, re.M)


# ============================================================================ a figure quoted twice agrees
#: a measured figure: a number and its unit (``462.5 ms``, ``17.31 M``, ``8 min``, ``1.2 GiB``)
FIGURE = re.compile(r'(?<![\w.])(\d+(?:\.\d+)?) ?(ms|s|min|MiB|GiB|M|G)(?![\w/])')
#: a link to a markdown file (another doc or a section of one) or to a section of the same doc
DOC_LINK = re.compile(r'\]\(([^)\s]*?\.md)?(?:#([\w-]+))?\)')


def _significant_digits(number: str) -> int:
    return len(number.replace('.', '').lstrip('0'))


def _same_figure(quoted: str, source: str) -> bool:
    """``quoted`` is ``source`` to ``quoted``'s precision (463 quotes 462.5; 218 does not)."""
    decimals = len(quoted.split('.')[1]) if '.' in quoted else 0
    scale = 10 ** decimals
    return int(float(source) * scale + 0.5) == int(round(float(quoted) * scale))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _sections(text: str) -> dict:
    """anchor -> the text of that heading's section (up to the next heading of its level or above)."""
    text = FENCE.sub('\n', text)
    headings = list(re.finditer(r'^(#+) (.+)$', text, re.M))
    sections = {}
    for i, heading in enumerate(headings):
        level = len(heading.group(1))
        end = next((h.start() for h in headings[i + 1:] if len(h.group(1)) <= level), len(text))
        sections[_slug(heading.group(2))] = text[heading.start():end]
    return sections


#: a table header's unit: ``ms / image``, ``Params (M)``, ``Peak MiB``
HEADER_UNIT = re.compile(r'(?<![\w.])(ms|s|min|MiB|GiB|M|G)(?![\w.])')
NUMBER_CELL = re.compile(r'^\**(\d+(?:\.\d+)?)\**$')
#: a sentence ends at a full stop or semicolon followed by a capital, a bracket or a code span
SENTENCE_END = re.compile(r'(?<=[.;])\s+(?=[A-Z(`\[])')


def _cells(row: str) -> list:
    return [cell.strip() for cell in row.strip().strip('|').split('|')]


def _paragraphs(text: str) -> list:
    """(text, figures) of each prose paragraph and each table row of a markdown text (code blocks left out);
    a number alone in a table cell takes the unit its column header names."""
    pieces = []
    for block in re.split(r'\n\s*\n', FENCE.sub('\n\n', text)):
        lines = block.splitlines()
        rows = [line for line in lines if line.startswith('|')]
        prose = ' '.join(line for line in lines if not line.startswith('|'))
        if prose.strip():
            pieces.append((prose, FIGURE.findall(prose)))
        if len(rows) > 2:
            units = [HEADER_UNIT.findall(cell) for cell in _cells(rows[0])]
            for row in rows[2:]:
                figures = FIGURE.findall(row)
                for cell, unit in zip(_cells(row), units):
                    number = NUMBER_CELL.match(cell)
                    if number and len(unit) == 1:
                        figures.append((number.group(1), unit[0]))
                pieces.append((row, figures))
    return pieces


def _figures(text: str) -> list:
    return [figure for _, figures in _paragraphs(text) for figure in figures]


def _resolve(doc: str, target: str) -> str:
    return osp.normpath(osp.join(osp.dirname(doc), target)) if target else doc


def check_quoted_figures(docs: dict) -> list:
    """The figure convention of the docs, checked: ``docs`` maps a doc's path (relative to the repository) to its
    text; the result lists every breach, one line each.

    1. A sentence that links to a section (``[...](benchmarks.md#backbones-at-224x224-2026-12-02)``, or
       ``(#anchor)`` in the same doc) quotes that section: each of its figures in a unit the section has
       figures in must be one of them, to the quoted precision.
    2. A figure with three or more significant digits that several docs give has a source among them: one doc
       that each of the others links to from the section (text under one heading) that gives the figure.
    """
    problems = []
    located = {}   # (value, unit) -> {doc giving it: the docs linked from the sections that give it}
    for doc, text in docs.items():
        for part in re.split(r'(?m)^(?=#+ )', FENCE.sub('\n', text)):
            section_links = {_resolve(doc, target) for target, _ in DOC_LINK.findall(part)}
            for paragraph, figures in _paragraphs(part):
                problems += _check_linked_sentences(doc, paragraph, docs)
                for number, unit in figures:
                    if _significant_digits(number) >= 3:
                        located.setdefault((float(number), unit), {}).setdefault(doc, set()).update(section_links)
    for (value, unit), givers in sorted(located.items()):
        # the same figure to a coarser precision (463 for 462.5) counts as the same
        givers = {doc: set(links) for doc, links in givers.items()}
        for (other_value, other_unit), other_givers in located.items():
            if other_unit == unit and other_value != value and _same_figure(_plain(other_value), _plain(value)):
                for doc, links in other_givers.items():
                    givers.setdefault(doc, set()).update(links)
        if len(givers) < 2:
            continue
        if not any(all(doc == source or source in links for doc, links in givers.items()) for source in givers):
            problems.append(f'{sorted(givers)} all give {_plain(value)} {unit}, none of them as the source the '
                            f'others link to (from the section that gives it)')
    return sorted(set(problems))


def _plain(value: float) -> str:
    return f'{value:g}'


def _check_linked_sentences(doc: str, paragraph: str, docs: dict) -> list:
    problems = []
    for sentence in SENTENCE_END.split(paragraph):
        quoted = FIGURE.findall(sentence)
        for target, anchor in DOC_LINK.findall(sentence):
            target_doc = _resolve(doc, target)
            if not (quoted and anchor and target_doc in docs):
                continue
            section = _sections(docs[target_doc]).get(anchor)
            if section is None:
                problems.append(f'{doc}: links to {target_doc}#{anchor}, a section that does not exist')
                continue
            source = _figures(section)
            for number, unit in quoted:
                same_unit = sorted({n for n, u in source if u == unit}, key=float)
                if same_unit and not any(_same_figure(number, n) for n in same_unit):
                    problems.append(f'{doc}: quotes {number} {unit} beside a link to {target_doc}#{anchor}, '
                                    f'whose {unit} figures are {same_unit}')
    return problems


def _docs_texts() -> dict:
    return {osp.relpath(doc, ROOT): _text(doc) for doc in DOCS}


def test_quoted_figures_agree_with_their_source():
    assert check_quoted_figures(_docs_texts()) == []


# ============================================================================ claims about code, checked on its AST
#: "`TARGET` uses `NAME`", "`TARGET` imports no `NAME`", "`TARGET` calls `F` without `KW`" / "with `KW=VALUE`":
#: TARGET a repository file (``mmoverlock/ops/depthwise_triton.py``, or its file name where that is unique under
#: mmoverlock/ and tools/) or a dotted module or function (``mmengine.runner.checkpoint.load_from_local``)
CLAIM = re.compile(r'`(?P<target>[\w]+[./][\w./]+)` (?P<verb>imports|uses|needs|calls) (?P<no>no )?`(?P<name>[\w.]+=?)`'
                   r'(?: (?P<how>with|without) `(?P<keyword>\w+)(?:=(?P<value>[^`]+))?`)?')


def _python_files() -> list:
    return [path for folder in ('mmoverlock', 'tools')
            for path in glob.glob(osp.join(ROOT, folder, '**', '*.py'), recursive=True)]


def _claim_target(target: str):
    """The AST the claim is about: a module's or one of its functions' / classes'."""
    import ast
    import importlib.util
    if target.endswith('.py'):
        path = osp.join(ROOT, target)
        if not osp.isfile(path):
            found = [p for p in _python_files() if osp.basename(p) == target]
            assert len(found) == 1, f'the docs make a claim about `{target}`, which names {len(found)} files'
            path = found[0]
        return ast.parse(_text(path))
    parts = target.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec('.'.join(parts[:cut]))
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and spec.origin.endswith('.py'):
            node = ast.parse(_text(spec.origin))
            for name in parts[cut:]:
                node = next((n for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                             and n.name == name), None)
                assert node is not None, f'the docs make a claim about `{target}`, which does not exist'
            return node
    raise AssertionError(f'the docs make a claim about `{target}`, which is neither a file nor a module')


def _dotted(node) -> str:
    import ast
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f'{_dotted(node.value)}.{node.attr}'
    return ''


def _references(tree) -> set:
    """Every name a tree refers to: imported modules and names, names, attribute chains, call keywords."""
    import ast
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
        elif isinstance(node, (ast.Name, ast.Attribute)):
            dotted = _dotted(node)
            names.update({dotted, dotted.rsplit('.', 1)[-1]} if dotted else set())
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(f'{node.arg}=')
    return names


def check_code_claims(text: str) -> list:
    """The claims of a markdown text about code (:data:`CLAIM`), each checked against the target's AST; the
    result lists the false ones."""
    import ast
    problems = []
    for claim in CLAIM.finditer(' '.join(text.split())):
        tree = _claim_target(claim['target'])
        name, said = claim['name'], claim.group(0)
        if claim['how']:
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                     and (_dotted(n.func) == name or _dotted(n.func).endswith('.' + name))]
            given = [{k.arg: ast.unparse(k.value) for k in call.keywords if k.arg} for call in calls]
            if not calls:
                problems.append(f'{said}: it has no call of {name}')
            elif claim['how'] == 'without' and any(claim['keyword'] in keywords for keywords in given):
                problems.append(f'{said}: a call passes {claim["keyword"]}')
            elif claim['how'] == 'with' and not any(
                    claim['keyword'] in keywords and claim['value'] in (None, keywords[claim['keyword']])
                    for keywords in given):
                problems.append(f'{said}: no call passes {claim["keyword"]}={claim["value"]} (its calls pass {given})')
        elif bool(claim['no']) == (name in _references(tree)):
            problems.append(f'{said}: {"it does" if claim["no"] else "it does not"} refer to {name}')
    return problems


def test_claims_about_code_are_true():
    claims = [(doc, claim.group(0)) for doc in DOCS for claim in CLAIM.finditer(' '.join(_text(doc).split()))]
    assert claims, 'no doc makes a claim in the checked form: the check would pass vacuously'
    problems = [f'{_doc_id(doc)}: {problem}' for doc in DOCS for problem in check_code_claims(_text(doc))]
    assert problems == []


# ============================================================================ the checks catch the drift they are for
def test_figure_check_catches_a_quote_that_drifted_from_its_source():
    source = ('### Backbones at 224x224 (2026-12-02)\n\n| Mode | Batch | Model | ms / image |\n|---|---|---|---:|\n'
              '| infer | 8 | OverLoCK-T | 462.5 |\n')
    quote = 'In that run ([benchmarks.md](benchmarks.md#backbones-at-224x224-2026-12-02)) OverLoCK-T took {} per image.'
    assert check_quoted_figures({'docs/benchmarks.md': source, 'docs/deployment.md': quote.format('463 ms')}) == []
    assert check_quoted_figures({'docs/benchmarks.md': source,
                                 'docs/deployment.md': quote.format('462.5 ms')}) == []
    # the source re-measured, the quote left behind (or the quote taken from another run's table)
    drifted = check_quoted_figures({'docs/benchmarks.md': source, 'docs/deployment.md': quote.format('218.0 ms')})
    assert drifted == ["docs/deployment.md: quotes 218.0 ms beside a link to "
                       "docs/benchmarks.md#backbones-at-224x224-2026-12-02, whose ms figures are ['462.5']"]
    # within one doc: the torch.compile section quoting the backbone table's eager figure
    same_doc = source + ('\n### torch.compile\n\nEager: 218.0 ms / image '
                         '([that run](#backbones-at-224x224-2026-12-02)).\n')
    assert len(check_quoted_figures({'docs/benchmarks.md': same_doc})) == 1
    # a link to a section that is not there
    gone = check_quoted_figures({'docs/benchmarks.md': source, 'docs/deployment.md': quote.replace('2026-12-02',
                                                                                                   '2026-11-25')
                                 .format('463 ms')})
    assert gone == ['docs/deployment.md: links to docs/benchmarks.md#backbones-at-224x224-2026-11-25, a section that '
                    'does not exist']


def test_figure_check_catches_a_figure_repeated_without_its_source():
    source = '## Backbones\n\n| Model | ms / image |\n|---|---:|\n| OverLoCK-T | 462.5 |\n'
    unlinked = {'docs/benchmarks.md': source, 'docs/deployment.md': 'OverLoCK-T takes 463 ms per image.\n'}
    assert check_quoted_figures(unlinked) == [
        "['docs/benchmarks.md', 'docs/deployment.md'] all give 462.5 ms, none of them as the source the others "
        "link to (from the section that gives it)"]
    linked = {'docs/benchmarks.md': source,
              'docs/deployment.md': 'OverLoCK-T takes 463 ms per image ([benchmarks.md](benchmarks.md)).\n'}
    assert check_quoted_figures(linked) == []
    # a two-digit figure ("23 s") is too common to be a quote
    assert check_quoted_figures({'a.md': 'took 23 s', 'b.md': 'took 23 s'}) == []


def test_claim_check_catches_false_claims_about_code():
    # the drift of docs/compat.md: the depthwise Triton kernels were said to need do_bench (they use none)
    assert check_code_claims('`mmoverlock/ops/na2d_op.py` uses `torch.library`.') == []
    assert check_code_claims('`depthwise_triton.py` needs `do_bench`.') == [
        '`depthwise_triton.py` needs `do_bench`: it does not refer to do_bench']
    assert check_code_claims('`depthwise_triton.py` uses no `do_bench`.') == []
    # the drift of docs/reliability.md: mmengine's file loader said to load with weights_only=True on every torch
    assert check_code_claims('`mmengine.runner.checkpoint.load_from_local` calls `torch.load` without '
                             '`weights_only`.') == []
    assert check_code_claims('`mmengine.runner.checkpoint.load_from_local` calls `torch.load` with '
                             '`weights_only=True`.') == [
        "`mmengine.runner.checkpoint.load_from_local` calls `torch.load` with `weights_only=True`: no call passes "
        "weights_only=True (its calls pass [{'map_location': 'map_location'}])"]
    assert check_code_claims('`mmoverlock.utils.compat.safe_load_kwargs` calls `add_safe_globals` with '
                             '`weights_only=True`.')[0].endswith("(its calls pass [{}])")
    with pytest.raises(AssertionError, match='which does not exist'):
        check_code_claims('`mmengine.runner.checkpoint.no_such_loader` calls `torch.load` without `weights_only`.')

"""The plugin behaves like one: ``import mmoverlock`` registers its modules in scope ``mmoverlock`` (and the FLOP
rules of its own ops with mmengine's counters) and changes nothing else (mmengine's functions and root registries,
other libraries); the package's import graph has no cycle, not even through a function-level import, neither between
modules nor between the parts of the package (subpackages)."""
import ast
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = osp.join(ROOT, 'mmoverlock')

# Run in a fresh interpreter: records mmengine's state, imports mmoverlock, records it again.
SNAPSHOT = r'''
import importlib, inspect, json, sys
import mmengine.analysis.complexity_analysis as counters
import mmengine.fileio.backends.registry_utils as backends
import mmengine.registry as registries
import mmengine.runner.checkpoint as checkpoint
import mmengine.hooks, mmengine.runner

def root_registries():
    return {name: reg for name, reg in vars(registries).items() if isinstance(reg, registries.Registry)}

def state():
    functions = {}
    for module in (checkpoint, mmengine.runner, mmengine.hooks, mmengine.fileio):
        for name, obj in vars(module).items():
            if callable(obj):
                functions[f'{module.__name__}.{name}'] = id(obj)
    for cls in (checkpoint.CheckpointLoader, mmengine.hooks.CheckpointHook):
        for name, obj in vars(cls).items():
            functions[f'{cls.__name__}.{name}'] = id(obj)
    return dict(functions=functions,
                backends=sorted(backends.backends), prefix_backends=sorted(backends.prefix_to_backends),
                loaders=sorted(checkpoint.CheckpointLoader._schemes),
                modules={n: sorted(r.module_dict) for n, r in root_registries().items()},
                children={n: sorted(r.children) for n, r in root_registries().items()},
                op_handles={table: {op: id(h) for op, h in getattr(counters, table).items()}
                            for table in ('_DEFAULT_SUPPORTED_FLOP_OPS', '_DEFAULT_SUPPORTED_ACT_OPS')})

before = state()
import mmoverlock
after = state()
json.dump(dict(before=before, after=after, loaded=sorted(sys.modules)), sys.stdout)
'''


def _snapshot():
    out = subprocess.run([sys.executable, '-c', SNAPSHOT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_import_changes_nothing_but_its_own_scope():
    snap = _snapshot()
    before, after = snap['before'], snap['after']
    changed = sorted(k for k in before['functions'] if after['functions'].get(k) != before['functions'][k])
    assert changed == [], f'import mmoverlock rebound {changed}'
    assert after['backends'] == before['backends'] and after['prefix_backends'] == before['prefix_backends']
    assert after['loaders'] == before['loaders']
    assert after['modules'] == before['modules'], 'import mmoverlock wrote into mmengine\'s root registries'
    for name, children in after['children'].items():
        added = set(children) - set(before['children'][name])
        assert added <= {'mmoverlock'}, (name, added)
    assert 'mmoverlock' in after['children']['MODELS'] and 'mmoverlock' in after['children']['HOOKS']
    # mmengine's FLOP / activation counters: handles for mmoverlock's own ops added, the others as they were
    for table, handles in after['op_handles'].items():
        old = before['op_handles'][table]
        assert {op: h for op, h in handles.items() if op in old} == old, table
        assert sorted(set(handles) - set(old)) == ['mmoverlock::depthwise_conv2d', 'mmoverlock::na2d_av',
                                                   'mmoverlock::na2d_av_triton'], table


@pytest.mark.slow
def test_import_pulls_in_no_downstream_library():
    loaded = set(_snapshot()['loaded'])
    for name in ('mmdet', 'mmseg', 'mmpretrain', 'mmcv', 'torchvision', 'triton'):
        assert name not in loaded, f'import mmoverlock imported {name}'


def _imports(path: str, module: str):
    """Every mmoverlock module that ``module`` (file ``path``) imports, at any depth of its code."""
    package = module if osp.basename(path) == '__init__.py' else module.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{parent}.{base}' if base else parent
            names = [base] + [f'{base}.{a.name}' for a in node.names]
        else:
            continue
        found.update(n for n in names if n == 'mmoverlock' or n.startswith('mmoverlock.'))
    return found


def _modules():
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith('.py'):
                path = osp.join(folder, f)
                rel = osp.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                modules[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
    return modules


def _module_graph():
    """mmoverlock module -> the mmoverlock modules it imports (an import of a.b.c runs a/__init__ and a/b/__init__
    too; an imported name may be a module)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(path, name):
            while target and target not in modules:
                target = target.rpartition('.')[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _package_of(module: str) -> str:
    """The part of the package a module belongs to: its subpackage (``mmoverlock.models`` for
    ``mmoverlock.models.backbones.overlock``), or the module itself at the top level (``mmoverlock.timm``)."""
    return '.'.join(module.split('.')[:2])


def _package_graph(module_graph):
    """Subpackage -> the other subpackages (and top-level modules) its modules import; the package's own
    ``__init__`` (its interface, importing every part) is left out."""
    graph = {}
    for module, targets in module_graph.items():
        if module == 'mmoverlock':
            continue
        source = _package_of(module)
        graph.setdefault(source, set()).update(
            _package_of(t) for t in targets if t != 'mmoverlock' and _package_of(t) != source)
    return graph


def find_cycles(graph):
    """The import cycles of ``graph`` (node -> nodes it imports): each strongly connected component of more
    than one node (Tarjan's algorithm), as a sorted list; none for an acyclic graph."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_cycle_finder_on_small_graphs():
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert find_cycles({'a': {'b'}, 'b': {'a'}, 'c': {'d'}, 'd': {'c'}, 'e': {'a', 'c'}}) == [['a', 'b'], ['c', 'd']]


def test_package_graph_catches_the_models_checkpoint_cycle():
    """The cycle the package had (no module imports itself back, so the module-level test passed): the backbone
    imported ``checkpoint.load``, which imported ``models.layers``. The package-level graph finds it."""
    modules = {
        'mmoverlock': {'mmoverlock.models', 'mmoverlock.checkpoint'},
        'mmoverlock.models.backbones.overlock': {'mmoverlock.checkpoint.load', 'mmoverlock.models.layers'},
        'mmoverlock.models.layers': {'mmoverlock.ops.depthwise'},
        'mmoverlock.checkpoint.load': {'mmoverlock.models.layers', 'mmoverlock.checkpoint.io'},
        'mmoverlock.checkpoint.io': {'mmoverlock.utils.compat'},
        'mmoverlock.ops.depthwise': set(), 'mmoverlock.utils.compat': set(),
    }
    assert find_cycles(modules) == [], 'the module-level graph has no cycle'
    assert find_cycles(_package_graph(modules)) == [['mmoverlock.checkpoint', 'mmoverlock.models']]


def test_import_graph_has_no_cycle():
    graph = _module_graph()

    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    # a package's __init__ importing its own submodules is the package's interface, not a cycle
    cycles = [(a, b) for a in graph for b in graph[a]
              if not b.startswith(a + '.') and not a.startswith(b + '.') and reaches(b, a, set())]
    assert cycles == [], f'modules importing each other back: {cycles}'


def test_import_graph_has_no_package_level_cycle():
    """No two parts of the package import each other, through any chain of modules (``models`` -> ``checkpoint``
    -> ``models`` was one): each subpackage builds on the ones below it."""
    graph = _package_graph(_module_graph())
    assert {'mmoverlock.models', 'mmoverlock.checkpoint', 'mmoverlock.variants'} <= set(graph)
    assert 'mmoverlock.checkpoint' in graph['mmoverlock.models']    # the graph sees cross-package imports
    assert find_cycles(graph) == [], f'parts of the package importing each other back: {find_cycles(graph)}'

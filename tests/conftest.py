import importlib.util
import os
import os.path as osp

import pytest
import torch

# Without a GPU the Triton kernels (tests/test_na2d_triton.py) run under Triton's CPU interpreter, which must be
# switched on before triton is first imported (torch._dynamo and mmpretrain's imports pull it in): here, before
# any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

from mmoverlock.utils import compat  # noqa: E402  (after TRITON_INTERPRET: imports no triton)

#: tests of what FakeTensor / torch.compile / AOT dispatch see of mmoverlock's ops: torch 2.1 registers no fake
#: implementation (docs/compat.md); they skip there, naming the version
needs_fake_impl = pytest.mark.skipif(
    compat.FAKE_REGISTRATION is None,
    reason=f'torch {torch.__version__} registers no fake implementation of custom ops (torch.library.impl_abstract '
           f'arrived in torch 2.2), so FakeTensor and torch.compile cannot trace mmoverlock ops')
#: tests that call torch.library.opcheck (torch >= 2.4)
needs_opcheck = pytest.mark.skipif(not hasattr(torch.library, 'opcheck'),
                                   reason=f'torch.library.opcheck arrived in torch 2.4; this is torch '
                                          f'{torch.__version__}')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.join(osp.dirname(__file__), 'data')
FIXTURE = osp.join(DATA, 'overlock_tiny_fixture.pt')
LAYOUTS = osp.join(DATA, 'state_dict_layout')


#: fixtures that train or test through the tools: a test using one is an integration test (``make test-fast``
#: leaves it out); other integration tests carry ``@pytest.mark.integration`` themselves
INTEGRATION_FIXTURES = ('tiny_run', 'mask_rcnn_run', 'coco', 'data_root')


def pytest_sessionstart(session):
    """First line of every run, -q included: the torch and Triton it uses (``make test-compat`` shows its lane
    really runs torch 2.1)."""
    from mmoverlock.utils.compat import triton_version
    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    if reporter is not None:
        reporter.write_line(f'mmoverlock tests: torch {torch.__version__}, triton {triton_version()}')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in INTEGRATION_FIXTURES for name in getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """A tiny COCO-format set (``tests/helpers.py``'s ``make_coco``), one per test module."""
    from .helpers import make_coco
    root = str(tmp_path_factory.mktemp('coco'))
    make_coco(root)
    return root


@pytest.fixture(scope='session')
def fixture():
    """The golden fixture: an official tiny model's arch, inputs, state dicts and outputs (made with the
    release's code: tests/data/README.md)."""
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session', autouse=True)
def single_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP's spinning threads slow tiny models 10-60x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_tool(name):
    """Import ``tools/NAME.py`` (NAME may be ``analysis/get_flops``) as a module: its ``main(argv)`` runs the
    tool in-process. Tools import only installed packages (mmoverlock among them), so the import path is left
    as it is."""
    module_name = 'mmoverlock_tools_' + name.replace('/', '_')
    spec = importlib.util.spec_from_file_location(module_name, osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find(pipeline, type_name):
    """The one transform of ``type_name`` in a pipeline config."""
    hits = [t for t in pipeline if t['type'] == type_name]
    assert len(hits) == 1, f'{type_name} not found once in {[t["type"] for t in pipeline]}'
    return hits[0]

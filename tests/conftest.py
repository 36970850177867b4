import os.path as osp

import pytest
import torch

DATA = osp.join(osp.dirname(__file__), 'data')
FIXTURE = osp.join(DATA, 'overlock_tiny_fixture.pt')
LAYOUTS = osp.join(DATA, 'state_dict_layout')


@pytest.fixture(scope='session')
def fixture():
    """The official tiny model: arch, inputs, state dicts and outputs (../shared/reference)."""
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

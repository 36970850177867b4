"""``mmoverlock.GroupedParamsOptimWrapperConstructor``: mmengine's paramwise rules in one param group per distinct
set of options, and the same updates as mmengine's default constructor."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

import mmoverlock  # noqa: F401
from mmoverlock.engine import merge_param_groups


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.norm2(self.conv2(self.norm1(self.conv1(x)).relu())).relu()
        return self.head(x.mean((2, 3)))


def optim_cfg(constructor=None, **optimizer):
    cfg = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-2, **optimizer),
               paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.), 'head': dict(lr_mult=0.5)}))
    if constructor:
        cfg['constructor'] = constructor
    return cfg


def train(model, wrapper, steps=3):
    torch.manual_seed(1)
    for _ in range(steps):
        loss = model(torch.randn(2, 3, 8, 8)).square().mean()
        wrapper.update_params(loss)


def test_equal_options_share_one_group():
    model = TinyNet()
    default = build_optim_wrapper(model, optim_cfg())
    grouped = build_optim_wrapper(model, optim_cfg('mmoverlock.GroupedParamsOptimWrapperConstructor'))
    assert len(default.optimizer.param_groups) == len(list(model.parameters())) == 10
    groups = grouped.optimizer.param_groups
    # convs (decay), norms (no decay), head (half lr, decay)
    assert len(groups) == 3
    by_lr_wd = {(g['lr'], g['weight_decay']): [id(p) for p in g['params']] for g in groups}
    assert by_lr_wd[(0.1, 1e-2)] == [id(p) for p in (*model.conv1.parameters(), *model.conv2.parameters())]
    assert by_lr_wd[(0.1, 0.)] == [id(p) for p in (*model.norm1.parameters(), *model.norm2.parameters())]
    assert by_lr_wd[(0.05, 1e-2)] == [id(p) for p in model.head.parameters()]


@pytest.mark.parametrize('optimizer', [dict(type='SGD', foreach=True), dict(type='AdamW', foreach=True)])
def test_grouped_training_equals_the_default_constructors(optimizer):
    model = TinyNet()
    twin = copy.deepcopy(model)
    options = dict(optimizer)
    kind = options.pop('type')
    cfg = optim_cfg(**options)
    cfg['optimizer']['type'] = kind
    if kind == 'AdamW':
        cfg['optimizer'].pop('momentum')
    grouped_cfg = dict(copy.deepcopy(cfg), constructor='mmoverlock.GroupedParamsOptimWrapperConstructor')
    default = build_optim_wrapper(model, copy.deepcopy(cfg))
    grouped = build_optim_wrapper(twin, copy.deepcopy(grouped_cfg))
    train(model, default)
    train(twin, grouped)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    # the checkpointed optimizer state loads into a fresh grouped optimizer
    fresh = build_optim_wrapper(copy.deepcopy(twin), grouped_cfg)
    fresh.load_state_dict(grouped.state_dict())
    assert len(fresh.optimizer.state) == len(list(twin.parameters()))


def test_merge_keeps_order_and_separates_any_differing_option():
    a, b, c, d = (nn.Parameter(torch.zeros(1)) for _ in range(4))
    groups = [dict(params=[a], lr=1.), dict(params=[b], lr=1., betas=(0.9, 0.99)), dict(params=[c], lr=1.),
              dict(params=[d], lr=1., betas=(0.9, 0.99))]
    merged = merge_param_groups(groups)
    assert [[id(p) for p in g['params']] for g in merged] == [[id(a), id(c)], [id(b), id(d)]]
    assert merged[1]['betas'] == (0.9, 0.99) and 'betas' not in merged[0]
    assert groups[0]['params'] == [a]   # the input groups are left as they were

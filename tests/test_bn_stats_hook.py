"""FreezeBNStatsHook: BatchNorm statistics frozen from a given iteration, weights still trained."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from mmoverlock.engine import FreezeBNStatsHook


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))

    def forward(self, x):
        return self.head(self.backbone(x))


def train_iterations(hook, model, iterations):
    """What mmengine's loop does around the hook: model.train() each epoch, then before_train_iter, a step."""
    runner = SimpleNamespace(model=model, iter=0, max_iters=iterations)
    hook.before_train(runner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshots = []
    for it in range(iterations):
        model.train()
        runner.iter = it
        hook.before_train_iter(runner, it)
        optimizer.zero_grad()
        out = model(torch.randn(2, 3, 6, 6) * 3 + 1)
        (out - torch.randn_like(out)).pow(2).mean().backward()
        optimizer.step()
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    return snapshots


def test_statistics_freeze_at_begin_and_weights_keep_training():
    torch.manual_seed(0)
    model = Net()
    hook = FreezeBNStatsHook(begin=2, modules=['backbone.1'])
    snaps = train_iterations(hook, model, 4)
    stats = 'backbone.1.running_mean'
    assert not torch.equal(snaps[0][stats], snaps[1][stats])      # iterations 0, 1: batch statistics
    assert torch.equal(snaps[1][stats], snaps[2][stats]) and torch.equal(snaps[2][stats], snaps[3][stats])
    assert not torch.equal(snaps[2]['backbone.1.weight'], snaps[3]['backbone.1.weight'])   # still trained
    # the BatchNorms not named keep following their batches
    assert not torch.equal(snaps[2]['backbone.3.running_mean'], snaps[3]['backbone.3.running_mean'])
    assert not torch.equal(snaps[2]['head.1.running_mean'], snaps[3]['head.1.running_mean'])


def test_begin_fraction_is_a_point_of_the_run():
    torch.manual_seed(0)
    snaps = train_iterations(FreezeBNStatsHook(begin_fraction=0.5, modules=['backbone']), Net(), 6)
    means = [s['backbone.1.running_mean'] for s in snaps]
    assert not torch.equal(means[1], means[2]) and torch.equal(means[2], means[3]) and torch.equal(means[3], means[5])


def test_a_module_freezes_every_batchnorm_inside_it():
    model = Net()
    assert FreezeBNStatsHook(modules='backbone').norms(model) == [model.backbone[1], model.backbone[3]]


@pytest.mark.parametrize('modules, message', [
    (['neck'], "no module 'neck'; top-level modules: \\['backbone', 'head'\\]"),
    (['backbone.0'], "'backbone.0' holds no BatchNorm")])
def test_a_wrong_module_name_is_one_line(modules, message):
    with pytest.raises(ValueError, match=message):
        FreezeBNStatsHook(modules=modules).norms(Net())


def test_bad_arguments():
    with pytest.raises(ValueError, match='begin=-1'):
        FreezeBNStatsHook(begin=-1)
    with pytest.raises(ValueError, match='at least one module'):
        FreezeBNStatsHook(modules=[])
    with pytest.raises(ValueError, match='begin_fraction=1.5'):
        FreezeBNStatsHook(begin_fraction=1.5)
    with pytest.raises(ValueError, match='either begin or a begin_fraction'):
        FreezeBNStatsHook(begin=10, begin_fraction=0.5)

"""Freeze BatchNorm statistics part-way through training (small batches trained from scratch)."""
from typing import List, Optional, Sequence

import torch.nn as nn
from mmengine.hooks import Hook
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import HOOKS
from .channel_check import unwrap_model


@HOOKS.register_module()
class FreezeBNStatsHook(Hook):
    """From training iteration ``begin`` on, the BatchNorms under ``modules`` normalise with their running
    statistics, as they will at test time, while their weights and biases keep training.

    Trained from scratch with 2 images per batch, a BatchNorm early in the network normalises each batch by
    that batch's own colour statistics; the network comes to rely on it, and at test time the running
    statistics (an average over many batches) leave low-contrast images unnormalised. Freezing the statistics
    once they have settled lets the remaining iterations train the network that will be tested (measured on
    the demo in ``docs/demo.md``). Large batches, SyncBN over many GPUs or a pretrained backbone do not need this.

    Args:
        begin (int): the first iteration (0-based, over the whole run) with frozen statistics. Default: 0.
        begin_fraction (float, optional): instead of ``begin``, that fraction of the run's iterations, e.g.
            ``2 / 3`` (the same point of the schedule whatever the number of processes or images).
        modules (Sequence[str]): names of modules of the model (as in ``model.named_modules()``, e.g.
            ``'backbone.patch_embed1'``); every BatchNorm inside them is frozen. Default: ``('backbone',)``.
    """
    priority = 'NORMAL'

    def __init__(self, begin: int = 0, begin_fraction: Optional[float] = None,
                 modules: Sequence[str] = ('backbone', )):
        if isinstance(modules, str):
            modules = (modules, )
        if begin < 0 or not modules:
            raise ValueError(f'FreezeBNStatsHook: begin={begin}, modules={list(modules)}; need begin >= 0 and '
                             f'at least one module name')
        if begin_fraction is not None and (begin or not 0 <= begin_fraction <= 1):
            raise ValueError(f'FreezeBNStatsHook: begin_fraction={begin_fraction} (with begin={begin}); give '
                             f'either begin or a begin_fraction in [0, 1]')
        self.begin = begin
        self.begin_fraction = begin_fraction
        self.modules = tuple(modules)
        self._norms: Optional[List[_BatchNorm]] = None

    def norms(self, model: nn.Module) -> List[_BatchNorm]:
        """The BatchNorms this hook freezes; raises ValueError naming a module that is missing or holds none."""
        named = dict(model.named_modules())
        norms = []
        for name in self.modules:
            if name not in named:
                raise ValueError(f"FreezeBNStatsHook: the model has no module '{name}'; top-level modules: "
                                 f'{[n for n, _ in model.named_children()]}')
            found = [m for m in named[name].modules() if isinstance(m, _BatchNorm)]
            if not found:
                raise ValueError(f"FreezeBNStatsHook: module '{name}' holds no BatchNorm; nothing to freeze")
            norms += found
        return norms

    def before_train(self, runner) -> None:
        self._norms = self.norms(unwrap_model(runner.model))
        if self.begin_fraction is not None:
            self.begin = round(self.begin_fraction * runner.max_iters)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # every iteration: the loops call model.train() at each epoch start and after each validation
        if runner.iter >= self.begin:
            for norm in self._norms:
                norm.eval()

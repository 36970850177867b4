"""Training loops and samplers that resume exactly where a run stopped, without loading the skipped data.

mmengine 0.10's ``Runner.resume`` restores the model, the optimizer, the schedulers, the message hub and the
loop's ``_epoch`` / ``_iter``. Then

* ``EpochBasedTrainLoop`` starts the interrupted epoch again from its first batch: a run resumed from a
  checkpoint saved by iteration (``CheckpointHook(by_epoch=False)``) trains those batches twice and runs
  past ``max_iters``;
* ``IterBasedTrainLoop`` skips the trained batches by loading them (``next(dataloader)`` once per iteration);
* the sampler was built before the resume, with the new run's seed: a config without a fixed
  ``randomness.seed`` shuffles the resumed run in another order;
* the global random generators are re-seeded, so random augmentation and the detectors' random proposal
  sampling draw another stream than the uninterrupted run did.

:class:`ResumableEpochBasedTrainLoop` and :class:`ResumableIterBasedTrainLoop` (mmengine's loops, same
arguments) fix the four: they keep the sampler's seed in the message hub (saved in every checkpoint) and give it
back to the sampler on resume; they seed torch, numpy and ``random`` before each iteration's batch is loaded
with a function of (run seed, iteration), so the random stream of an iteration does not depend on where the run
started; and they position the sampler after the batches already trained. With :class:`ResumableSampler` /
:class:`ResumableInfiniteSampler` (mmengine's ``DefaultSampler`` / ``InfiniteSampler``, same arguments) no
data of a skipped batch is loaded: the index order is replayed, indices only. With another sampler the loops
skip by loading the batches, as mmengine's iteration loop does. Random augmentation inside dataloader
worker processes (``num_workers > 0``) draws from the workers' own generators, which mmengine seeds once per
worker start: there a resumed run is statistically, not bitwise, the uninterrupted one.
"""
import itertools
import logging
import random
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import BatchSampler, DataLoader

from ..registry import DATA_SAMPLERS, LOOPS

#: message-hub key of the training sampler's shuffle seed (saved in the checkpoints, restored on resume)
SAMPLER_SEED_KEY = 'train_sampler_seed'


@DATA_SAMPLERS.register_module()
class ResumableSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` (same arguments and order) that can start its next pass at any position.

    :meth:`start_with` gives the indices of the next pass (the rest of an interrupted epoch, in the epoch's
    order); the pass after it is the normal one of its epoch. ``len()`` stays the epoch's length.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._next_pass: Optional[List[int]] = None

    def start_with(self, indices: Sequence[int]) -> None:
        """The next ``iter()`` yields ``indices`` (this rank's), then passes are whole epochs again."""
        self._next_pass = list(indices)

    def __iter__(self) -> Iterator[int]:
        if self._next_pass is not None:
            indices, self._next_pass = self._next_pass, None
            return iter(indices)
        return super().__iter__()


@DATA_SAMPLERS.register_module()
class ResumableInfiniteSampler(InfiniteSampler):
    """mmengine's ``InfiniteSampler`` (same arguments and order) that can be positioned in its index stream."""

    def skip(self, count: int) -> None:
        """Restart this rank's index stream, from the sampler's (current) seed, ``count`` indices in."""
        self.indices = itertools.islice(self._indices_of_rank(), count, None)


def index_sampler(dataloader: DataLoader):
    """The sampler that orders the indices: the batch sampler's (mmengine builds one for every loader)."""
    batch_sampler = getattr(dataloader, 'batch_sampler', None)
    return getattr(batch_sampler, 'sampler', None) or getattr(dataloader, 'sampler', None)


def iteration_seed(seed: int, iteration: int) -> int:
    """A 32-bit seed for ``iteration`` of a run seeded with ``seed``; neighbouring iterations and runs give
    unrelated streams."""
    return int(np.random.SeedSequence([seed % 2**32, iteration]).generate_state(1)[0])


class _ResumableLoopMixin:
    """What both loops add to mmengine's: the sampler's seed kept across a resume, and per-iteration seeds."""

    def restore_sampler_seed(self) -> None:
        """After ``Runner.resume``: give the sampler the seed the interrupted run shuffled with (in the message
        hub of its checkpoint); in a new run, record the sampler's seed there."""
        sampler, hub = index_sampler(self.dataloader), self.runner.message_hub
        if getattr(sampler, 'seed', None) is None:
            return
        saved = hub.get_info(SAMPLER_SEED_KEY)
        if saved is not None and saved != sampler.seed:
            print_log(f'sampler seed {sampler.seed} -> {saved}, the seed of the run being resumed',
                      logger='current')
            sampler.seed = saved
        hub.update_info(SAMPLER_SEED_KEY, sampler.seed)

    def seed_iteration(self) -> None:
        """Seed torch, numpy and ``random`` for the iteration about to load its batch (``self._iter``)."""
        seed = iteration_seed(self.runner.seed, self._iter)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(_ResumableLoopMixin, EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` (same arguments) that resumes inside an epoch.

    Resumed from a checkpoint saved after ``k`` batches of an epoch, it trains that epoch's batches ``k+1 ..``
    in the epoch's order (``[epoch][k+1/len]``), then the next epochs: the same batches, iteration numbers,
    schedule and validation as the uninterrupted run.
    """

    def run(self) -> torch.nn.Module:
        self.restore_sampler_seed()
        return super().run()

    def run_epoch(self) -> None:
        """Train the rest of the current epoch (all of it unless resumed inside it)."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        done = self._iter - self._epoch * len(self.dataloader)
        if not 0 <= done <= len(self.dataloader):
            print_log(f'the checkpoint is at iteration {self._iter} of epoch {self._epoch + 1}, outside this '
                      f'epoch of {len(self.dataloader)} batches (another data set or batch size?): training the '
                      f'epoch from its first batch', logger='current', level=logging.WARNING)
            done = 0
        batches = self._batches_after(done)
        idx = done
        while True:
            self.seed_iteration()
            try:
                data_batch = next(batches)
            except StopIteration:
                break
            self.run_iter(idx, data_batch)
            idx += 1
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _batches_after(self, done: int) -> Iterator:
        """An iterator over this epoch's batches after the first ``done``."""
        if done == 0:
            return iter(self.dataloader)
        sampler, batch_sampler = index_sampler(self.dataloader), self.dataloader.batch_sampler
        if hasattr(sampler, 'set_epoch'):   # what DistSamplerSeedHook did in before_train_epoch, if present
            sampler.set_epoch(self._epoch)
        if isinstance(sampler, ResumableSampler) and batch_sampler is not None:
            rest = list(batch_sampler)[done:]        # indices only: what the uninterrupted run trains next
            indices = [index for batch in rest for index in batch]
            sampler.start_with(indices)
            if list(batch_sampler) == rest:          # the batch sampler groups them as it did (checked)
                sampler.start_with(indices)
                print_log(f'resuming epoch {self._epoch + 1} at batch {done + 1}/{len(self.dataloader)}: the '
                          f'sampler starts after the {done} batches already trained', logger='current')
                return iter(self.dataloader)
            print_log(f'{type(batch_sampler).__name__} groups the remaining indices differently: skipping the '
                      f'{done} trained batches by loading them', logger='current', level=logging.WARNING)
        else:
            print_log(f'skipping the {done} batches of epoch {self._epoch + 1} already trained by loading them '
                      f"(train_dataloader.sampler=dict(type='mmoverlock.ResumableSampler') skips without loading)",
                      logger='current', level=logging.WARNING)
        batches = iter(self.dataloader)
        for _ in range(done):
            next(batches)
        return batches


class _SeededPositionedIterator:
    """The iteration loop's data iterator, seeded before each batch; the first ``skip`` calls return None
    without loading anything (the loop's own skipping of batches the sampler is already positioned after)."""

    def __init__(self, loop: '_ResumableLoopMixin', iterator, skip: int = 0) -> None:
        self.loop, self.iterator, self.skip = loop, iterator, skip

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip > 0:
            self.skip -= 1
            return None
        self.loop.seed_iteration()
        return next(self.iterator)


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(_ResumableLoopMixin, IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop`` (same arguments) whose resume positions a
    :class:`ResumableInfiniteSampler` after the trained batches instead of loading them, with the interrupted
    run's sampler seed and per-iteration seeds."""

    def run(self) -> torch.nn.Module:
        self.restore_sampler_seed()
        sampler, batch_sampler = index_sampler(self.dataloader), self.dataloader.batch_sampler
        iterator, skip = self.dataloader_iterator, 0
        if self._iter > 0 and isinstance(sampler, ResumableInfiniteSampler):
            if type(batch_sampler) is BatchSampler:   # batch i holds indices i*bs .. (i+1)*bs-1 of the stream
                sampler.skip(self._iter * batch_sampler.batch_size)
                skip = self._iter   # mmengine's run() calls next() that often to skip: answered without loading
                print_log(f'resuming at iteration {self._iter + 1}: the sampler starts after the {self._iter} '
                          f'batches already trained', logger='current')
            else:   # a grouping batch sampler: mmengine's skipping by loading, from the restored seed
                sampler.skip(0)
            iterator = type(self.dataloader_iterator)(self.dataloader)   # a fresh one, from the positioned sampler
        self.dataloader_iterator = _SeededPositionedIterator(self, iterator, skip)
        return super().run()


__all__ = ['ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop', 'ResumableSampler',
           'ResumableInfiniteSampler', 'index_sampler', 'iteration_seed', 'SAMPLER_SEED_KEY']

"""Check the checkpoint named by ``load_from`` before the Runner loads it.

mmengine loads ``load_from`` with ``strict=False``: a checkpoint of another arch or another model only logs a
warning per mismatched tensor and the run goes on with those layers at their initialisation -- a test then
reports the numbers of a half-random model, a resume trains one. A truncated file fails deep in torch with a
zip-reader message that does not name it.

:class:`CheckpointCheckHook` reads the file first (weights only; one-line error for a missing, corrupt or
not-allow-listed file) and compares it with the model: shape mismatches are an error when testing or
resuming and a one-line warning when fine-tuning (``load_from`` in training, where a new head is expected).
An ``http(s)://`` ``load_from`` is downloaded into torch's hub cache and read the same way (weights only)
before mmengine loads it from there, so a checkpoint holding arbitrary objects is refused by the config's
hook rather than unpickled by mmengine's URL loader (which loads with ``weights_only=False``).
"""
import logging
from typing import List

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..checkpoint.io import extract_state_dict, read_checkpoint, shape_mismatches
from ..registry import HOOKS
from .channel_check import unwrap_model

MAX_LISTED = 5


def _listing(items: List[str]) -> str:
    return '; '.join(items[:MAX_LISTED]) + (f'; ... ({len(items) - MAX_LISTED} more)' if len(items) > MAX_LISTED
                                            else '')


def check_checkpoint_fits(model: torch.nn.Module, path: str, strict: bool = True) -> None:
    """Raise (``strict``) or warn, in one line, if the checkpoint at ``path`` does not fit ``model``."""
    model = unwrap_model(model)
    state = extract_state_dict(read_checkpoint(path))
    if hasattr(model, 'to_model_layout'):   # a model that reads other key layouts (OverLoCKClassifier)
        state = model.to_model_layout(state)
    own = model.state_dict()
    if not any(k in own for k in state):
        raise ValueError(f"checkpoint '{path}' shares no tensor name with the model (its names look like "
                         f"{list(state)[:3]}, the model's like {list(own)[:3]}); wrong file or wrong config?")
    mismatched = shape_mismatches(own, state)
    if not mismatched:
        return
    message = (f"checkpoint '{path}' does not fit this model ({len(mismatched)} shape mismatches, another arch "
               f"or number of classes?): {_listing(mismatched)}")
    if strict:
        raise ValueError(message + '; testing and resuming need the checkpoint of this very model')
    print_log(message + '; those layers keep their initialisation (fine-tuning)', logger='current',
              level=logging.WARNING)


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """Before the run, check the checkpoint named by ``load_from`` (a file or an http(s) URL; other schemes
    are left to mmengine's loader).

    Strict (an error) when testing or resuming, a warning when ``load_from`` starts a fine-tuning run.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        path = getattr(runner, '_load_from', None) or runner.cfg.get('load_from')   # Runner has no public name
        if not isinstance(path, str) or not path or ('://' in path and not path.startswith(('http://', 'https://'))):
            return
        # Runner.train() turns its train_loop config into a loop (with run()) before before_run
        training = callable(getattr(getattr(runner, '_train_loop', None), 'run', None))
        check_checkpoint_fits(runner.model, path, strict=not training or bool(runner.cfg.get('resume')))


__all__ = ['CheckpointCheckHook', 'check_checkpoint_fits']

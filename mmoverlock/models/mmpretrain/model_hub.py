"""OverLoCK's ImageNet models in mmpretrain's model hub: ``list_models('overlock*')``, ``get_model(name)``,
``ImageClassificationInferencer(name)``.

The hub reads ``configs/cls/metafile.yml`` (model names, configs, weights): from the installed package's
``.mim`` folder (written by ``setup.py`` when a wheel is built) or from the source tree of an editable install.
"""
import os.path as osp
from typing import Optional, Tuple

PACKAGE = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METAFILE = osp.join('configs', 'cls', 'metafile.yml')


def find_metafile() -> Tuple[Optional[str], Optional[str]]:
    """(path of the classification metafile, the folder its config paths are relative to), or (None, None)."""
    for root in (osp.join(PACKAGE, '.mim'), osp.dirname(PACKAGE)):
        if osp.isfile(osp.join(root, METAFILE)):
            return osp.join(root, METAFILE), root
    return None, None


def register_model_hub() -> bool:
    """Register the ImageNet models with mmpretrain's ``ModelHub`` (once). False when no metafile ships with
    this installation (the models then build from their config files only)."""
    from mmpretrain.apis import ModelHub
    path, root = find_metafile()
    if path is None:
        return False
    if not ModelHub.has('overlock_t_in1k'):
        ModelHub.register_model_index(path, config_prefix=root)
    return True

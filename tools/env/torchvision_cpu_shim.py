"""Let PyPI's CUDA-linked torchvision import beside the CPU torch wheel.

Its C++ extension cannot load without CUDA libraries; torchvision then still registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally and fails at import. Defining those two
schemas first (no kernels) lets its pure-Python parts — the transforms mmpretrain uses — import.
mmcv provides the detection ops (nms, RoIAlign) that mmdet uses. Installed by tools/setup_env.sh into
mmoverlock's CPU venv only (a ``.pth`` line imports this module); GPU users with a matching
torchvision need none of it.
"""
import importlib.abc
import sys

_LIBRARIES = []


class _TorchvisionSchemaFinder(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path=None, target=None):
        if name == 'torchvision':
            sys.meta_path.remove(self)
            import torch
            library = torch.library.Library('torchvision', 'DEF')
            for op in ('nms', 'qnms'):
                library.define(f'{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
            _LIBRARIES.append(library)  # keep the definitions alive
        return None


sys.meta_path.insert(0, _TorchvisionSchemaFinder())

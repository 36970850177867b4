"""Silence the warnings that third-party code prints on every run of mmoverlock's tools and that no user can act
on: setuptools' ``pkg_resources`` deprecation (raised when mmengine, mmcv or mmdet import ``pkg_resources``),
mmdet's mask-head copy-construct notice, and mmengine's visualizer notes about predictions drawn past the
image border. The tools import this module before anything else; ``import mmoverlock`` does not."""
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
warnings.filterwarnings('ignore', message='To copy construct from a tensor', category=UserWarning, module='mmdet')
warnings.filterwarnings('ignore', message='Warning: The (bbox|polygon) is out of bounds', category=UserWarning,
                        module='mmengine')
